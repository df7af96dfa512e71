"""Services of one gateway node shared by its connections: rooms, typing, presence upkeep."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from gateway.auth import Principal, TokenVerifier
from gateway.connection import Connection
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.ratelimit import KeyedLimits
from gateway.typing_timers import TypingTimers
from shared import control, packets, protocol
from shared.broker import Broker, BrokerUnavailable
from shared.control import ControlOperation, Evict, Revoke, UnknownOperation
from shared.errors import CloseCode, ErrorCode
from shared.logs import Throttled
from shared.packets import BadPacket
from shared.settings import Settings

log = logging.getLogger(__name__)
CONTROL_ROOM = "_control"  # not a valid bot id (bots are "b" + hex), so never a chat room
PROBE_INTERVAL = 5.0
BAD_PACKET_LOG_INTERVAL = 10.0  # seconds between two warnings of one kind of dropped pub/sub message
DRAIN_MIN_RATE = 200  # connections handed back per second at least, so small nodes stop quickly


def user_ref(principal: Principal) -> dict[str, Any]:
    """The ``from`` object of a user's frames."""
    ref: dict[str, Any] = {"kind": "user", "id": principal.user}
    if principal.name:
        ref["name"] = principal.name
    return ref


class Node:
    def __init__(self, settings: Settings, broker: Broker, verifier: TokenVerifier, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.broker = broker
        self.verifier = verifier
        self.metrics = metrics
        self.hub = Hub(broker.fanout, metrics)
        broker.fanout.set_handler(self.on_event)
        broker.fanout.set_gap_handler(self.on_gap)
        if broker.pipe is not None:
            broker.pipe.observer = metrics.redis_round_trip
        self.typing = TypingTimers(settings.typing_timeout, self._typing_expired)
        self.connections: dict[str, Connection] = {}
        self.user_connections: Counter[str] = Counter()
        self.names: dict[str, str] = {}  # user -> display name, for typing frames the server sends
        self.draining = False
        self.http_limits = KeyedLimits(settings.http_per_second, max(1.0, 2 * settings.http_per_second))
        self.probe_room = "_probe." + "".join(c if c.isalnum() or c in "_.-" else "-" for c in settings.node_id)[:50]
        self.probe_seen = time.monotonic()
        self._probe_token = secrets.token_hex(8)  # tells this node's probes from anything else on its channel
        self._probe_sent = 0  # sequence number of the last probe published
        self._probe_answered = 0  # highest sequence number that came back
        self._probe_wanted = 0  # the node is not ready until a probe of at least this number came back
        self._bad_packet_log = Throttled(log, BAD_PACKET_LOG_INTERVAL)
        self.verifier_secret: str | None = None  # HS256 key the dev login signs with, when there is one
        self._tasks: set[asyncio.Task[Any]] = set()

    def on_event(self, room: str, packet: bytes) -> None:
        """Every pub/sub message this node receives (the fan-out's handler). Never raises.

        Anyone who can publish on the Redis can reach these channels, and during a rolling deploy
        so can nodes of another release: whatever cannot be read or handled is dropped, counted
        and logged now and then, and the next message is read as if nothing happened.
        """
        channel = "control" if room == CONTROL_ROOM else "probe" if room == self.probe_room else "room"
        try:
            unpacked = packets.unpack(packet)
            match channel:
                case "room":
                    self.hub.deliver(room, unpacked)
                case "control":
                    self._control(control.decode(unpacked.frame))
                case _:
                    self._probe_returned(unpacked.frame)
        except UnknownOperation as exc:
            self._bad_packet(channel, "unknown", room, str(exc))
        except BadPacket as exc:
            self._bad_packet(channel, "malformed", room, str(exc))
        except Exception as exc:
            self._bad_packet(channel, "failed", room, repr(exc), exc_info=True)

    def _bad_packet(self, channel: str, reason: str, room: str, problem: str, *, exc_info: bool = False) -> None:
        self.metrics.pubsub_bad_packets.labels(channel, reason).inc()
        # the room names the channel; the packet itself is never logged (it may be large, or anyone's)
        self._bad_packet_log.warning(
            f"{channel}:{reason}",
            "dropped a pub/sub message on %s (%s): %s",
            room[:100],
            reason,
            problem[:200],
            exc_info=exc_info,
        )

    def on_gap(self) -> None:
        """The pub/sub link was rebuilt: fill every local room from history before live events go on.

        Until a probe sent after this comes back the node is not ready: a link that was rebuilt
        proves nothing until a message has made the whole round trip on it.
        """
        self.metrics.pubsub_resets.inc()
        self._probe_wanted = self._probe_sent + 1
        self.spawn(self.send_probe())
        for room in list(self.hub.rooms):
            self.spawn(self._catch_up(room))

    async def _catch_up(self, room: str) -> None:
        try:
            complete = await self.hub.catch_up(room, self.broker.history, self.settings.replay_max)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("could not fill a gap in room history: %s", exc)
            complete = False
        if not complete:
            # a hole we cannot fill: the clients resume with since through a fresh connection
            for connection in list(self.hub.rooms.get(room, ())):
                connection.send(protocol.encode({"type": "reconnect", "delay_ms": int(random.uniform(0, 2000))}))
                connection.close(CloseCode.SERVICE_RESTART, "missed events; resume with since")

    async def start(self) -> None:
        """Subscribe to the node control channel and this node's own probe channel."""
        await self.broker.fanout.subscribe(CONTROL_ROOM)
        await self.broker.fanout.subscribe(self.probe_room)
        self.probe_seen = time.monotonic()

    async def control(self, operation: ControlOperation) -> None:
        """Tell every node to act on users' connections (revocation, removal from a room)."""
        await self.broker.fanout.publish(CONTROL_ROOM, packets.pack(control.encode(operation)))

    def _control(self, operation: ControlOperation) -> None:
        match operation:
            case Revoke(user=user):
                for connection in [c for c in self.connections.values() if c.user == user]:
                    connection.send(protocol.error_frame(ErrorCode.UNAUTHORIZED, "your access was revoked"))
                    connection.close(CloseCode.AUTH, "revoked")
            case Evict(room=room, user=user):
                for connection in list(self.connections.values()):
                    if user is not None and connection.user != user:
                        continue
                    if room in connection.rooms or room in connection.pending:
                        self._evict(connection, room)

    def _evict(self, connection: Connection, room: str) -> None:
        connection.rooms.discard(room)
        connection.pending.pop(room, None)
        connection.send(protocol.encode({"type": "left", "room": room, "reason": "removed"}))
        self.spawn(self.leave_room(room, connection))

    async def probe(self) -> None:
        """Publish to this node's probe channel every few seconds, so a deaf pub/sub link shows in readiness."""
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            await self.send_probe()

    async def send_probe(self) -> None:
        self._probe_sent += 1
        frame = protocol.encode({"type": "probe", "node": self._probe_token, "seq": self._probe_sent})
        await self.publish(self.probe_room, frame)

    def _probe_returned(self, frame: bytes) -> None:
        try:
            probe = orjson.loads(frame)
        except orjson.JSONDecodeError:
            raise BadPacket("the probe is not JSON") from None
        seq = probe.get("seq") if isinstance(probe, dict) else None
        if not isinstance(seq, int) or probe.get("node") != self._probe_token:
            raise BadPacket("not a probe this node sent")
        self.probe_seen = time.monotonic()
        self._probe_answered = max(self._probe_answered, seq)

    def pubsub_healthy(self) -> bool:
        """True while this node's own probes come back, and one came back since the link was last rebuilt."""
        recent = time.monotonic() - self.probe_seen < 3 * PROBE_INTERVAL
        return recent and self._probe_answered >= self._probe_wanted

    # -- connections ---------------------------------------------------------------------
    def at_capacity(self, user: str) -> bool:
        return self.user_connections[user] >= self.settings.max_connections_per_user

    def open(self, principal: Principal, ws: web.WebSocketResponse, transport: asyncio.Transport) -> Connection:
        connection = Connection(
            secrets.token_urlsafe(9),
            principal,
            ws,
            transport,
            max_buffer=self.settings.outbox_max_bytes,
            compress=self.settings.compression,
            on_slow=self._slow_consumer,
        )
        self.connections[connection.id] = connection
        self.user_connections[principal.user] += 1
        if principal.name:
            self.names[principal.user] = principal.name
        self.metrics.connections_opened.inc()
        self.metrics.connections.inc()
        return connection

    async def closed(self, connection: Connection, reason: str) -> None:
        """Forget a connection that ended: leave its rooms and tell the others."""
        if self.connections.pop(connection.id, None) is None:
            return
        self.user_connections[connection.user] -= 1
        if self.user_connections[connection.user] <= 0:
            del self.user_connections[connection.user]
        if connection.expiry_timer is not None:
            connection.expiry_timer.cancel()
        self.metrics.connections.dec()
        self.metrics.connections_closed.labels(reason).inc()
        rooms = list(connection.rooms) + list(connection.pending)
        connection.rooms.clear()
        connection.pending.clear()
        results = await asyncio.gather(*(self.leave_room(room, connection) for room in rooms), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("leaving a room on disconnect failed: %r", result, extra={"session": connection.id})

    async def leave_room(self, room: str, connection: Connection) -> None:
        self.hub.remove(room, connection)
        if connection.user not in self.hub.local_users(room) and self.typing.stopped(room, connection.user):
            await self.publish(room, self.typing_frame(room, connection.principal.user, False), exclude=connection.user)
        change = await self.broker.presence.leave(room, connection.user, connection.id)
        if change.changed and change.count < self.settings.presence_limit:
            await self.publish(room, self.presence_frame(room, connection.user, "leave"), exclude=connection.user)

    def _slow_consumer(self, connection: Connection) -> None:
        if connection.closing:
            return
        log.info("closing slow consumer", extra={"session": connection.id})
        self.metrics.slow_consumers.inc()
        connection.close(CloseCode.POLICY, "slow consumer: resume with since")

    # -- ephemeral room events -------------------------------------------------------------
    async def publish(self, room: str, frame: bytes, *, exclude: str = "") -> None:
        """Publish an event that is not kept in history; losing it is harmless, so failures are logged."""
        try:
            await self.broker.fanout.publish(room, packets.pack(frame, exclude_user=exclude))
        except (BrokerUnavailable, OSError) as exc:
            self.metrics.redis_errors.inc()
            log.warning("could not publish an event: %s", exc)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in a task the node owns (cancelled at shutdown, never garbage collected early)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def typing_frame(self, room: str, user: str, state: bool) -> bytes:
        sender: dict[str, Any] = {"kind": "user", "id": user}
        if user in self.names:
            sender["name"] = self.names[user]
        return protocol.encode({"type": "typing", "room": room, "from": sender, "state": state})

    @staticmethod
    def presence_frame(room: str, user: str, event: str) -> bytes:
        return protocol.encode({"type": "presence", "room": room, "user": user, "event": event})

    def _typing_expired(self, room: str, user: str) -> None:
        self.spawn(self.publish(room, self.typing_frame(room, user, False), exclude=user))

    # -- upkeep ------------------------------------------------------------------------------
    async def keep_presence(self) -> None:
        """Refresh this node's presence entries and announce users whose node died."""
        interval = self.settings.presence_ttl / 3
        while True:
            await asyncio.sleep(interval)
            entries = [(room, c.user, c.id) for room, members in self.hub.rooms.items() for c in members]
            try:
                await self.broker.presence.refresh(entries)
                for room in list(self.hub.rooms):
                    for user in await self.broker.presence.expire(room):
                        await self.publish(room, self.presence_frame(room, user, "leave"))
            except (BrokerUnavailable, OSError) as exc:
                log.warning("presence upkeep failed: %s", exc)

    async def drain(self) -> None:
        """Hand every client back to the load balancer, spread over ``drain_seconds``.

        Each client gets ``reconnect`` with a random delay and a 1012 close, in batches, so the
        other nodes see a gentle ramp instead of a thundering herd.
        """
        self.draining = True
        self.metrics.ready.set(0)
        connections = list(self.connections.values())
        if not connections:
            return
        duration = min(self.settings.drain_seconds, len(connections) / DRAIN_MIN_RATE)
        steps = max(1, min(len(connections), int(duration * 10)))
        batch = -(-len(connections) // steps)
        pause = duration / steps
        closing = []
        for start in range(0, len(connections), batch):
            for connection in connections[start : start + batch]:
                delay_ms = int(random.uniform(0, 1000 * min(5.0, max(self.settings.drain_seconds, 0.5))))
                connection.send(protocol.encode({"type": "reconnect", "delay_ms": delay_ms}))
                closing.append(connection.close(CloseCode.SERVICE_RESTART, "node restarting"))
            await asyncio.sleep(pause)
        await asyncio.gather(*closing, return_exceptions=True)

    async def close(self) -> None:
        self.typing.close()
        self.hub.close()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
