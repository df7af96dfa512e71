"""The reply a bot streams: pieces gathered into deltas, kept for late joiners, in order.

A language model produces a token every few milliseconds; a publish per token would cost the
room a frame per token. A piece goes out at once when nothing was sent for ``interval`` seconds
(so the first token is not held back); pieces that follow within ``interval`` go out as one ``delta``,
through the broker's reply stream, which keeps the text so far for clients that join or reload
mid-reply. Deltas take their place in the worker's one ordered line of room events (see
:class:`worker.context.RoomEvents`), so they always come before the final message.
"""

from __future__ import annotations

import asyncio
import logging

from shared import packets
from shared import server_frames as sf
from shared.broker.base import BrokerUnavailable, Replies
from shared.packets import StreamPosition
from worker.context import RoomEvents

log = logging.getLogger(__name__)
BACKLOG_CHARS = 16_384  # unsent text beyond this is sent at once, and the writer waits for it


class ReplyWriter:
    """One attempt's reply to one request."""

    def __init__(
        self, replies: Replies, events: RoomEvents, room: str, reply_to: str, attempt: int, interval: float
    ) -> None:
        self._replies = replies
        self._events = events
        self._room = room
        self._reply_to = reply_to
        self._attempt = attempt
        self._interval = interval
        self._published = ""  # what the room got of it (a push is refused once the request is cancelled)
        self._pending: list[str] = []  # written, not sent yet
        self._pending_chars = 0
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last: asyncio.Task[None] | None = None  # the newest push on its way
        self._sent_at = -interval  # loop time of the last delta sent

    def restart(self) -> None:
        """Tell the room that this attempt starts the reply again (a worker died mid-reply, or a retry)."""
        position = StreamPosition(self._reply_to, self._attempt, 0)
        frame = sf.encode(sf.Stream(self._room, self._reply_to, "", self._attempt, 0))
        self._push(position, "", packets.pack(frame, position=position))

    async def write(self, piece: str) -> None:
        if not piece:
            return
        self._pending.append(piece)
        self._pending_chars += len(piece)
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._sent_at >= self._interval
        if self._interval <= 0 or self._pending_chars >= BACKLOG_CHARS:
            self.send()
            if self._last is not None:
                await asyncio.shield(self._last)  # a fast stream waits for the broker, not the other way
        elif quiet and self._timer is None:
            self.send()
        elif self._timer is None:
            self._timer = loop.call_at(self._sent_at + self._interval, self.send)

    def send(self) -> None:
        """Send what is pending as one delta now (it goes out behind everything started before)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        self._sent_at = asyncio.get_running_loop().time()
        piece = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        self._seq += 1
        position = StreamPosition(self._reply_to, self._attempt, self._seq)
        frame = sf.encode(sf.Delta(self._room, self._reply_to, piece, self._attempt, self._seq))
        self._push(position, piece, packets.pack(frame, position=position))

    def _push(self, position: StreamPosition, piece: str, packet: bytes) -> None:
        self._last = self._events.in_order(self._pushed(position, piece, packet))

    async def _pushed(self, position: StreamPosition, piece: str, packet: bytes) -> None:
        try:
            if await self._replies.push(self._room, position, piece, packet):
                self._published += piece
        except (BrokerUnavailable, OSError) as exc:
            # a lost piece costs late joiners some text; the final message has it all
            log.warning("could not send a piece of the reply in %s: %s", self._room, exc)

    async def flush(self) -> None:
        """Send what is pending and wait until every piece went out."""
        self.send()
        if self._last is not None:
            await asyncio.shield(self._last)

    async def published_text(self) -> str:
        """Send what is pending; the text the room got, once every push is answered.

        A cancelled reply is stored with this text: what its clients saw, not what the kind had
        written after the cancel reached the broker.
        """
        await self.flush()
        return self._published

    def close(self) -> None:
        """Drop what is pending (the attempt failed or was abandoned)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
