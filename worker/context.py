"""Live room events a worker sends while it handles a request, and the context kinds get.

Status, typing and delta frames are ephemeral: published to the room, never stored. Losing one
is harmless (the final reply and status are what count), so a failed publish is logged, not raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from shared import protocol
from shared.broker.base import BrokerUnavailable, FanOut
from shared.broker.queue import Request
from shared.models import Bot

log = logging.getLogger(__name__)
KIND_STATES = ("thinking", "executing")  # the states a kind may report; the worker sends the others


def bot_sender(bot: Bot) -> dict[str, Any]:
    """The ``from`` of the bot's frames."""
    return {"kind": "bot", "id": bot.id, "name": bot.name}


class RoomEvents:
    """Builds and publishes the ephemeral frames of bot rooms."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout

    async def _publish(self, room: str, frame: dict[str, Any]) -> None:
        try:
            await self.fanout.publish(room, protocol.pack(protocol.encode(frame)))
        except (BrokerUnavailable, OSError) as exc:
            log.warning("could not publish %s to %s: %s", frame["type"], room, exc)

    async def status(self, room: str, message_id: str, state: str, detail: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "status", "room": room, "message_id": message_id, "state": state}
        if detail:
            frame["detail"] = detail
        await self._publish(room, frame)

    async def typing(self, bot: Bot, state: bool) -> None:
        await self._publish(bot.id, {"type": "typing", "room": bot.id, "from": bot_sender(bot), "state": state})

    async def delta(self, room: str, reply_to: str, text: str) -> None:
        await self._publish(room, {"type": "delta", "room": room, "reply_to": reply_to, "text": text})


class RequestContext:
    """The :class:`worker.kinds.base.Context` of one request.

    Typing stays on until turned off: it is sent again every ``typing_refresh`` seconds, because
    clients drop a typing indicator that is not refreshed (a crashed worker never sends false).
    """

    def __init__(
        self, bot: Bot, config: dict[str, Any], request: Request, events: RoomEvents, typing_refresh: float
    ) -> None:
        self.bot = bot
        self.config = config
        self.request = request
        self.events = events
        self.typing_refresh = typing_refresh
        self.final: str | None = None  # set by reply()
        self._typing: asyncio.Task[None] | None = None  # refreshes typing while it is on

    async def typing(self, state: bool) -> None:
        if state == (self._typing is not None):
            return
        if state:
            await self.events.typing(self.bot, True)
            self._typing = asyncio.get_running_loop().create_task(self._keep_typing())
            return
        await self._stop_typing()
        await self.events.typing(self.bot, False)

    async def _keep_typing(self) -> None:
        while True:
            await asyncio.sleep(self.typing_refresh)  # the refresh period itself, not a wait for a condition
            await self.events.typing(self.bot, True)

    async def _stop_typing(self) -> None:
        task, self._typing = self._typing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def status(self, state: str, detail: str | None = None) -> None:
        if state not in KIND_STATES:
            raise ValueError(f"a bot kind may report {' or '.join(KIND_STATES)}, not {state!r}")
        await self.events.status(self.bot.id, self.request.message_id, state, detail)

    async def delta(self, text: str) -> None:
        if text:
            await self.events.delta(self.bot.id, self.request.message_id, text)

    async def reply(self, text: str) -> None:
        if self.final is not None:
            raise RuntimeError("the reply was already set")
        self.final = text

    async def close(self) -> None:
        """Turn typing off; the worker calls this when the request is over."""
        await self.typing(False)
