"""Every pub/sub message this node receives: room events to the hub, control operations to the
connections they name, probes to the probe. Whatever cannot be read is dropped and counted.

Anyone who can publish on the Redis can reach these channels, and during a rolling deploy so
can nodes of another release, so :meth:`Intake.on_event` never raises: a bad message costs
itself and nothing after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway import events as ev
from gateway.connections import ConnectionTable
from gateway.hub import Hub
from gateway.metrics import GatewayMetrics
from gateway.probe import Probe
from shared import control, packets
from shared.broker.base import FanOut
from shared.control import ControlOperation, Evict, Revoke, UnknownOperation
from shared.logs import Throttled
from shared.packets import BadPacket

log = logging.getLogger(__name__)
CONTROL_ROOM = "_control"  # not a valid bot id (bots are "b" + hex), so never a chat room
BAD_PACKET_LOG_INTERVAL = 10.0  # seconds between two warnings of one kind of dropped pub/sub message


class Intake:
    def __init__(
        self,
        fanout: FanOut,
        hub: Hub,
        connections: ConnectionTable,
        probe: Probe,
        metrics: GatewayMetrics,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
    ) -> None:
        self._fanout = fanout
        self._hub = hub
        self._connections = connections
        self._probe = probe
        self._metrics = metrics
        self._spawn = spawn
        self._bad_packet_log = Throttled(log, BAD_PACKET_LOG_INTERVAL)

    async def start(self) -> None:
        """Subscribe to the control channel of all nodes and to this node's probe channel."""
        await self._fanout.subscribe(CONTROL_ROOM)
        await self._fanout.subscribe(self._probe.room)

    async def send_control(self, operation: ControlOperation) -> None:
        """Tell every node to act on users' connections (revocation, removal from a room)."""
        await self._fanout.publish(CONTROL_ROOM, packets.pack(control.encode(operation)))

    def on_event(self, room: str, packet: bytes) -> None:
        """The fan-out's handler. Never raises."""
        channel = "control" if room == CONTROL_ROOM else "probe" if room == self._probe.room else "room"
        try:
            unpacked = packets.unpack(packet)
            match channel:
                case "room":
                    self._hub.deliver(room, unpacked)
                case "control":
                    self._control(control.decode(unpacked.frame))
                case _:
                    self._probe.returned(unpacked.frame)
        except UnknownOperation as exc:
            self._bad_packet(channel, "unknown", room, str(exc))
        except BadPacket as exc:
            self._bad_packet(channel, "malformed", room, str(exc))
        except Exception as exc:
            self._bad_packet(channel, "failed", room, repr(exc), exc_info=True)

    def _control(self, operation: ControlOperation) -> None:
        match operation:
            case Revoke(user=user):
                for connection in self._connections.of_user(user):
                    self._spawn(connection.feed(ev.Revoked()))
            case Evict(room=room, user=user):
                targets = self._connections.of_user(user) if user is not None else list(self._connections)
                for connection in targets:
                    session = connection.session
                    if room in session.rooms or room in session.pending:
                        self._spawn(connection.feed(ev.Evicted(room)))

    def _bad_packet(self, channel: str, reason: str, room: str, problem: str, *, exc_info: bool = False) -> None:
        self._metrics.pubsub_bad_packets.labels(channel, reason).inc()
        # the room names the channel; the packet itself is never logged (it may be large, or anyone's)
        self._bad_packet_log.warning(
            f"{channel}:{reason}",
            "dropped a pub/sub message on %s (%s): %s",
            room[:100],
            reason,
            problem[:200],
            exc_info=exc_info,
        )
