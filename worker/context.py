"""Live room events a worker sends while it handles a request, and the context kinds get.

Status, typing and delta frames are ephemeral: published to the room, never stored. Losing one
is harmless (the final reply and status are what count), so a failed publish is logged, not raised.

Frames are sent without waiting for Redis: each publish starts as a task at once, and tasks take
their first step in the order they were created, so frames reach the broker's pipeline in the
order they were sent. The handler starts the reply's append and the ack the same way, behind the
frames, so a quick request costs one round trip in all instead of one per frame.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from shared import packets
from shared import server_frames as sf
from shared.broker.base import BrokerUnavailable, FanOut, History
from shared.broker.queue import Request
from shared.models import Bot

if TYPE_CHECKING:
    from worker.streaming import ReplyWriter

log = logging.getLogger(__name__)
KIND_STATES = ("thinking", "executing")  # the states a kind may report; the worker sends the others
HISTORY_MAX = 100  # most messages a kind may read before its request
HISTORY_AHEAD = 100  # messages newer than the request that a history read looks past
T = TypeVar("T")


def bot_sender(bot: Bot) -> dict[str, Any]:
    """The ``from`` of the bot's frames."""
    return {"kind": "bot", "id": bot.id, "name": bot.name}


def _id_key(message_id: str) -> tuple[int, int]:
    """A history id as a sortable pair; an id that is not one sorts first."""
    ms, _, seq = message_id.partition("-")
    return (int(ms), int(seq)) if ms.isdigit() and seq.isdigit() else (0, 0)


def status_packet(room: str, message_id: str, state: str, detail: str | None = None) -> bytes:
    """The pub/sub packet of a ``status`` frame."""
    return packets.pack(sf.encode(sf.Status(room, message_id, state, detail or None)))


class RoomEvents:
    """Builds and publishes the ephemeral frames of bot rooms, in order, without waiting for each."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout
        self._started: set[asyncio.Task[Any]] = set()  # started and not finished: kept until done

    def in_order(self, call: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start ``call`` now, behind every frame and call started before it."""
        task = asyncio.get_running_loop().create_task(call)
        self._started.add(task)
        task.add_done_callback(self._started.discard)
        return task

    async def _publish(self, room: str, packet: bytes) -> None:
        try:
            await self.fanout.publish(room, packet)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("could not publish to %s: %s", room, exc)

    def send(self, room: str, packet: bytes) -> asyncio.Task[None]:
        """Publish ``packet``; await the task only to wait until it went out."""
        return self.in_order(self._publish(room, packet))

    def status(self, room: str, message_id: str, state: str, detail: str | None = None) -> asyncio.Task[None]:
        return self.send(room, status_packet(room, message_id, state, detail))

    def typing(self, bot: Bot, state: bool) -> asyncio.Task[None]:
        frame = sf.TypingEvent(bot.id, bot_sender(bot), state)
        return self.send(bot.id, packets.pack(sf.encode(frame)))

    async def flush(self) -> None:
        """Wait until everything started so far is over (the worker stops: the broker closes next)."""
        while self._started:
            await asyncio.gather(*self._started, return_exceptions=True)


class RequestContext:
    """The :class:`worker.kinds.base.Context` of one request.

    Typing stays on until turned off: it is sent again every ``typing_refresh`` seconds by a timer,
    because clients drop a typing indicator that is not refreshed (a crashed worker never sends false).
    """

    def __init__(
        self,
        bot: Bot,
        config: dict[str, Any],
        request: Request,
        events: RoomEvents,
        typing_refresh: float,
        history: History | None = None,
        writer: ReplyWriter | None = None,
    ) -> None:
        self.bot = bot
        self.config = config
        self.request = request
        self.events = events
        self.typing_refresh = typing_refresh
        self.final: str | None = None  # set by reply()
        self._typing: asyncio.TimerHandle | None = None  # the next refresh while typing is on
        self._history = history  # the room's history, read by kinds that answer in context
        self.writer = writer  # where the attempt's streamed pieces go (one per attempt)
        self.cancelled = False  # the sender, the owner or an admin stopped the reply
        self.announce_cancel = True  # the room is told by this worker (not when the gateway did)
        self.cancel_reason: str | None = None  # the status detail of the cancel, when it is not a person's

    def show_typing(self, state: bool) -> None:
        """Turn typing on or off; the frame is sent in order without waiting for it."""
        if state == (self._typing is not None):
            return
        if state:
            self._refresh()
            return
        assert self._typing is not None
        self._typing.cancel()
        self._typing = None
        self.events.typing(self.bot, False)

    def _refresh(self) -> None:
        self.events.typing(self.bot, True)
        self._typing = asyncio.get_running_loop().call_later(self.typing_refresh, self._refresh)

    async def typing(self, state: bool) -> None:
        self.show_typing(state)

    async def status(self, state: str, detail: str | None = None) -> None:
        if state not in KIND_STATES:
            raise ValueError(f"a bot kind may report {' or '.join(KIND_STATES)}, not {state!r}")
        await self.events.status(self.bot.id, self.request.message_id, state, detail)

    async def delta(self, text: str) -> None:
        if self.writer is None:
            raise RuntimeError("this request does not stream")
        await self.writer.write(text)

    async def reply(self, text: str) -> None:
        if self.final is not None:
            raise RuntimeError("the reply was already set")
        self.final = text

    async def history(self, limit: int) -> list[dict[str, Any]]:
        # read past newer messages (the user wrote on while the bot was busy), up to HISTORY_AHEAD of
        # them; a reply is stored after the messages sent meanwhile, but belongs after its question
        limit = max(0, min(limit, HISTORY_MAX))
        if not limit or self._history is None:
            return []
        page = await self._history.read_latest(self.bot.id, limit + HISTORY_AHEAD)
        asked = _id_key(self.request.message_id)
        earlier = []
        for message_id, raw in page.entries:
            frame = orjson.loads(raw)
            answers = frame.get("reply_to")
            place = _id_key(answers) if isinstance(answers, str) and answers else _id_key(message_id)
            if place < asked:
                earlier.append((place, _id_key(message_id), frame))
        earlier.sort(key=lambda said: (said[0], said[1]))
        return [frame for _, _, frame in earlier[-limit:]]

    def close(self) -> None:
        """Turn typing off; the worker calls this when the request is over."""
        self.show_typing(False)
