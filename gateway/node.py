"""One gateway node, made of parts that each do one job, wired together here.

- :class:`~gateway.connections.ConnectionTable`: the connections open here, per-user caps, drain.
- :class:`~gateway.hub.Hub`: which connection is in which room; delivery of room events.
- :class:`~gateway.intake.Intake`: every pub/sub message in (room events, control, probe).
- :class:`~gateway.carrier.Carrier`: what sessions ask of the broker, carried out.
- :class:`~gateway.announcer.Announcer`: typing and presence, which history does not keep.
- :class:`~gateway.probe.Probe` and :class:`~gateway.upkeep.Upkeep`: what the node does on its own.

Data flows one way: client frames go from the socket to the session and out to the broker;
the broker's events come in through the intake and go out to sockets through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from gateway.announcer import Announcer
from gateway.auth import TokenVerifier
from gateway.carrier import Carrier
from gateway.connection import Connection
from gateway.connections import ConnectionTable
from gateway.heartbeat import Sweep
from gateway.hub import Hub
from gateway.intake import Intake
from gateway.metrics import GatewayMetrics
from gateway.principal import Principal
from gateway.probe import Probe
from gateway.ratelimit import KeyedLimits
from gateway.session import Session, SessionLimits
from gateway.upkeep import Upkeep
from shared.broker import Broker
from shared.settings import Settings


def session_limits(settings: Settings) -> SessionLimits:
    return SessionLimits(
        node_id=settings.node_id,
        heartbeat=settings.heartbeat,
        max_text_length=settings.max_text_length,
        max_rooms=settings.max_rooms_per_connection,
        messages_per_second=settings.messages_per_second,
        messages_burst=settings.messages_burst,
        jwt_leeway=settings.jwt_leeway,
        presence_limit=settings.presence_limit,
    )


class Node:
    def __init__(self, settings: Settings, broker: Broker, verifier: TokenVerifier, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.broker = broker
        self.verifier = verifier
        self.metrics = metrics
        self.verifier_secret: str | None = None  # HS256 key the dev login signs with, when there is one
        self._tasks: set[asyncio.Task[Any]] = set()
        self.hub = Hub(broker.fanout, metrics)
        self.announcer = Announcer(broker.fanout, metrics, settings.typing_timeout, self.spawn)
        self.connections = ConnectionTable(settings, metrics)
        self.sweep = Sweep(settings.heartbeat, self.spawn, self.closed)  # heartbeats and token deadlines
        self.probe = Probe(settings.node_id, self.announcer)
        self.intake = Intake(broker.fanout, self.hub, self.connections, self.probe, metrics, self.spawn)
        self.upkeep = Upkeep(settings, broker, self.hub, self.announcer, self.probe, metrics, self.spawn)
        self.carrier = Carrier(settings, broker, self.hub, self.announcer, verifier, metrics)
        self.http_limits = KeyedLimits(settings.http_per_second, max(1.0, 2 * settings.http_per_second))
        self._limits = session_limits(settings)
        broker.fanout.set_handler(self.intake.on_event)
        broker.fanout.set_gap_handler(self.upkeep.on_gap)
        if broker.pipe is not None:
            broker.pipe.observer = metrics.redis_round_trip

    def open(self, principal: Principal, ws: web.WebSocketResponse | None, transport: asyncio.Transport) -> Connection:
        """A new connection, counted and with its session, not yet welcomed."""
        session = Session(secrets.token_urlsafe(9), principal, self._limits, time.time())
        connection = Connection(
            session,
            ws,
            transport,
            self.carrier,
            max_buffer=self.settings.outbox_max_bytes,
            compress=self.settings.compression,
            on_slow=self.connections.slow_consumer,
        )
        self.connections.add(connection)
        if principal.name:
            self.announcer.names[principal.user] = principal.name
        return connection

    async def closed(self, connection: Connection, reason: str) -> None:
        """Forget a connection that ended: leave its rooms and tell the others."""
        if self.connections.remove(connection, reason):
            await connection.closed()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the node owns (cancelled at shutdown, never garbage collected early)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def pubsub_healthy(self) -> bool:
        return self.probe.healthy()

    async def close(self) -> None:
        self.announcer.close()
        self.hub.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
