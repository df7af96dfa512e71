"""Room events that history does not keep: typing and presence, published by this node.

Losing one is harmless (the next state change corrects it), so a failed publish is counted
and logged instead of failing the frame that caused it. Typing expires here: a user who stops
refreshing "typing" is announced as stopped after ``typing_timeout``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from gateway.metrics import GatewayMetrics
from gateway.typing_timers import TypingTimers
from shared import packets
from shared import server_frames as sf
from shared.broker.base import BrokerUnavailable, FanOut

log = logging.getLogger(__name__)
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class Announcer:
    def __init__(self, fanout: FanOut, metrics: GatewayMetrics, typing_timeout: float, spawn: Spawn) -> None:
        self._fanout = fanout
        self._metrics = metrics
        self._spawn = spawn
        self.typing = TypingTimers(typing_timeout, self._typing_expired)
        self.names: dict[str, str] = {}  # user -> display name, for the typing frames the server sends

    async def publish(self, room: str, frame: bytes, *, exclude: str = "") -> None:
        """Publish an event to the room's members everywhere except ``exclude``'s connections."""
        try:
            await self._fanout.publish(room, packets.pack(frame, exclude_user=exclude))
        except (BrokerUnavailable, OSError) as exc:
            self._metrics.redis_errors.inc()
            log.warning("could not publish an event: %s", exc)

    async def typing_changed(self, room: str, user: str, state: bool) -> None:
        """Announce a user starting to type, or stopping when they were typing."""
        if state:
            self.typing.started(room, user)
        elif not self.typing.stopped(room, user):
            return  # was not typing: nothing to announce
        await self.publish(room, self.typing_frame(room, user, state), exclude=user)

    def typing_changed_soon(self, room: str, user: str, state: bool) -> None:
        """:meth:`typing_changed` without waiting: the check is made now, the publish goes out behind.

        Most messages are sent by someone who was not typing: then nothing is published, and
        the message costs no await for it.
        """
        if state:
            self.typing.started(room, user)
        elif not self.typing.stopped(room, user):
            return
        self._spawn(self.publish(room, self.typing_frame(room, user, state), exclude=user))

    def publish_soon(self, room: str, frame: bytes, *, exclude: str = "") -> None:
        self._spawn(self.publish(room, frame, exclude=exclude))

    async def presence(self, room: str, user: str, event: str) -> None:
        await self.publish(room, sf.encode(sf.PresenceEvent(room, user, event)), exclude=user)

    def typing_frame(self, room: str, user: str, state: bool) -> bytes:
        sender: dict[str, Any] = {"kind": "user", "id": user}
        if user in self.names:
            sender["name"] = self.names[user]
        return sf.encode(sf.TypingEvent(room, sender, state))

    def _typing_expired(self, room: str, user: str) -> None:
        self._spawn(self.publish(room, self.typing_frame(room, user, False), exclude=user))

    def close(self) -> None:
        self.typing.close()
