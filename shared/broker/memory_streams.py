"""In-memory replies in progress and cancels, for one process (see :class:`shared.broker.base.Replies`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shared import protocol
from shared.broker.base import Latest, RequestInfo
from shared.broker.memory import MemoryStore
from shared.models import ReplyInFlight
from shared.packets import StreamPosition

CANCEL_TTL = 24 * 3600.0  # seconds a cancel is remembered: longer than any request waits


class MemoryReplies:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def push(self, room: str, position: StreamPosition, piece: str, packet: bytes) -> bool:
        settings, kept = self.store.settings, self.store.replies_in_flight
        key = (room, position.reply_to)
        now = time.monotonic()
        current = kept.get(key)
        if current is not None and current[3] <= now:
            current = None
        if current is not None and position.attempt < current[0]:
            return False
        if await self.cancel_mark(room, position.reply_to) is not None:
            return False
        if current is None or position.attempt > current[0]:
            current = (position.attempt, 0, "", 0.0)
        attempt, seq, text, _ = current
        if len((text + piece).encode()) <= settings.stream_max_bytes:
            text, seq = text + piece, position.seq
        kept[key] = (attempt, seq, text, now + settings.stream_ttl)
        self.store.deliver(room, packet)
        return True

    async def in_flight(self, room: str) -> list[ReplyInFlight]:
        now = time.monotonic()
        kept = self.store.replies_in_flight
        for key in [k for k, v in kept.items() if v[3] <= now]:
            del kept[key]
        return [
            ReplyInFlight(StreamPosition(reply_to, attempt, seq), text)
            for (r, reply_to), (attempt, seq, text, _) in kept.items()
            if r == room
        ]

    async def clear(self, room: str, reply_to: str) -> None:
        self.store.replies_in_flight.pop((room, reply_to), None)

    async def request(self, room: str, message_id: str) -> RequestInfo:
        store = self.store
        entry = next((fields for entry_id, fields in store.history(room).entries if entry_id == message_id), None)
        streaming = await self._streaming(room, message_id)
        return RequestInfo(
            sender=protocol.user_sender(entry["t"]) if entry is not None else None,
            answered=(room, message_id) in store.replied,
            streaming=streaming,
            cancelled=await self.cancel_mark(room, message_id) is not None,
        )

    async def _streaming(self, room: str, message_id: str) -> bool:
        return any(r.position.reply_to == message_id for r in await self.in_flight(room))

    async def cancel(self, room: str, message_id: str, *, announced: bool) -> None:
        mark = "announced" if announced else "announce"
        self.store.cancelled[(room, message_id)] = (mark, time.monotonic() + CANCEL_TTL)
        loop = asyncio.get_running_loop()
        for handler in self.store.cancel_handlers:
            loop.call_soon(handler, room, message_id)  # later, as a notice over Redis would be

    async def start(self, room: str, message_id: str, packet: bytes, *, latest_of: Latest | None = None) -> str | None:
        mark = await self.cancel_mark(room, message_id)
        if mark is not None:
            return mark
        if latest_of is not None and self._newer_from(room, latest_of):
            return "superseded"
        self.store.deliver(room, packet)
        return None

    def _newer_from(self, room: str, latest: Latest) -> bool:
        after = protocol.id_newer
        for entry_id, fields in self.store.inbox(room).entries:
            if after(entry_id, latest.entry_id) and protocol.user_sender_of_frame(fields.get("f", b"")) == latest.user:
                return True
        return False

    async def cancel_mark(self, room: str, message_id: str) -> str | None:
        entry = self.store.cancelled.get((room, message_id))
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def on_cancel(self, handler: Callable[[str, str], None]) -> None:
        self.store.cancel_handlers.append(handler)
