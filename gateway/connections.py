"""The connections open on this node: counted per user, capped, and handed back when draining."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Iterator

from gateway.connection import Connection
from gateway.metrics import GatewayMetrics
from shared import server_frames as sf
from shared.errors import CloseCode
from shared.settings import Settings

log = logging.getLogger(__name__)
DRAIN_MIN_RATE = 200  # connections handed back per second at least, so small nodes stop quickly


class ConnectionTable:
    def __init__(self, settings: Settings, metrics: GatewayMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._connections: dict[str, Connection] = {}
        self._per_user: Counter[str] = Counter()
        self.draining = False

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._connections.values()))  # a copy: closing one may remove it meanwhile

    def of_user(self, user: str) -> list[Connection]:
        return [c for c in self._connections.values() if c.user == user]

    def at_capacity(self, user: str) -> bool:
        return self._per_user[user] >= self._settings.max_connections_per_user

    def add(self, connection: Connection) -> None:
        self._connections[connection.id] = connection
        self._per_user[connection.user] += 1
        self._metrics.connections_opened.inc()
        self._metrics.connections.inc()

    def remove(self, connection: Connection, reason: str) -> bool:
        """Forget a connection that ended; False when it was already forgotten."""
        if self._connections.pop(connection.id, None) is None:
            return False
        self._per_user[connection.user] -= 1
        if self._per_user[connection.user] <= 0:
            del self._per_user[connection.user]
        self._metrics.connections.dec()
        self._metrics.connections_closed.labels(reason).inc()
        return True

    def slow_consumer(self, connection: Connection) -> None:
        """A client fell more than the outbox behind: it resumes with ``since`` on a new connection."""
        if connection.closing:
            return
        log.info("closing slow consumer", extra={"session": connection.id})
        self._metrics.slow_consumers.inc()
        connection.close(CloseCode.POLICY, "slow consumer: resume with since", "slow_consumer")

    async def drain(self) -> None:
        """Hand every client back to the load balancer, spread over ``drain_seconds``.

        Each client gets ``reconnect`` with a random delay and a 1012 close, in batches, so the
        other nodes see a gentle ramp instead of a thundering herd.
        """
        self.draining = True
        self._metrics.ready.set(0)
        connections = list(self)
        if not connections:
            return
        drain_seconds = self._settings.drain_seconds
        duration = min(drain_seconds, len(connections) / DRAIN_MIN_RATE)
        steps = max(1, min(len(connections), int(duration * 10)))
        batch = -(-len(connections) // steps)
        pause = duration / steps
        closing = []
        for start in range(0, len(connections), batch):
            for connection in connections[start : start + batch]:
                delay_ms = int(random.uniform(0, 1000 * min(5.0, max(drain_seconds, 0.5))))
                connection.send(sf.encode(sf.Reconnect(delay_ms)))
                closing.append(connection.close(CloseCode.SERVICE_RESTART, "node restarting", "drain"))
            await asyncio.sleep(pause)
        await asyncio.gather(*closing, return_exceptions=True)
