"""In-memory room histories for the single-process mode, on a :class:`MemoryStore`.

An append stores the message, publishes it and queues a request for the bot in one step, as
the append script does on Redis, with the same once-only rules for replies and resent client
ids. Every append and read trims the history by length and age first.
"""

from __future__ import annotations

import time

from shared import packets, protocol
from shared.broker.base import Appended, ClientId, HistoryPage, InboxFull, ReplyCancelled
from shared.broker.memory import MemoryStore, MemoryStream, now_ms
from shared.models import BotStatus

SENT_SWEEP_SIZE = 10_000


class MemoryHistory:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def append(
        self,
        room: str,
        tail: bytes,
        *,
        request: bool = False,
        reply_to: str | None = None,
        client_id: ClientId | None = None,
        cancelled: bool = False,
    ) -> Appended:
        store = self.store
        if reply_to is not None and (room, reply_to) in store.replied:
            first = store.replied[(room, reply_to)]
            return Appended(first, protocol.message_ts(first), duplicate=True)
        if reply_to is not None and not cancelled:
            mark = store.cancelled.get((room, reply_to))
            if mark is not None and mark[1] > time.monotonic():
                raise ReplyCancelled(reply_to)
        sent_key = (room, client_id.user, client_id.id) if client_id is not None else None
        if sent_key is not None:
            sent = store.sent.get(sent_key)
            if sent is not None and sent[1] > time.monotonic():
                return Appended(sent[0], protocol.message_ts(sent[0]), duplicate=True)
        if request and len(self.store.inbox(room).entries) >= self.store.settings.inbox_max:
            raise InboxFull(room)
        stream = self.store.history(room)
        message_id = stream.add({"t": tail})
        self._trim(stream)
        frame = protocol.compose_message(message_id, tail)
        if reply_to is not None:
            self.store.replied[(room, reply_to)] = message_id
            self.store.replies_in_flight.pop((room, reply_to), None)  # its text is this message now
        if sent_key is not None:
            now = time.monotonic()
            if len(store.sent) >= SENT_SWEEP_SIZE:  # forget the expired ones now and then, as Redis does
                store.sent = {key: value for key, value in store.sent.items() if value[1] > now}
            store.sent[sent_key] = (message_id, now + store.settings.client_id_window)
        bot = self.store.bots.get(room)
        queued = request and (bot is None or bot.status is not BotStatus.RUNNING)
        live = protocol.compose_message(message_id, tail, queued=True) if queued else frame
        self.store.deliver(room, packets.pack(live, message_id=message_id))
        if request:
            self.store.inbox(room).add({"m": message_id.encode(), "f": frame})
        return Appended(message_id, protocol.message_ts(message_id), queued=queued)

    def _trim(self, stream: MemoryStream) -> None:
        keep = self.store.settings.history_max
        if len(stream.entries) > 2 * keep:
            del stream.entries[: len(stream.entries) - keep]
        max_age = self.store.settings.history_max_age
        if max_age:
            oldest = now_ms() - int(max_age * 1000)
            while stream.entries and protocol.message_ts(stream.entries[0][0]) < oldest:
                stream.entries.pop(0)

    def _frames(self, entries: list[tuple[str, dict[str, bytes]]]) -> list[tuple[str, bytes]]:
        return [(entry_id, protocol.compose_message(entry_id, fields["t"])) for entry_id, fields in entries]

    async def read_after(self, room: str, since: str, limit: int) -> HistoryPage:
        stream = self.store.history(room)
        self._trim(stream)
        entries = stream.entries
        position = next((i for i, (entry_id, _) in enumerate(entries) if entry_id == since), None)
        if position is None:
            after = [e for e in entries if protocol.id_newer(e[0], since)]
            # newer than every kept message: trimming only drops older ones, so nothing was missed
            complete = not after and bool(entries) and protocol.id_newer(since, entries[-1][0])
        else:
            after = entries[position + 1 :]
            complete = True
        if len(after) > limit:
            after, complete = after[-limit:], False
        return HistoryPage(self._frames(after), self._last(stream), complete)

    async def read_latest(self, room: str, limit: int) -> HistoryPage:
        stream = self.store.history(room)
        self._trim(stream)
        return HistoryPage(self._frames(stream.entries[-limit:]), self._last(stream), True)

    async def read_range(self, room: str, after: str, limit: int) -> HistoryPage:
        stream = self.store.history(room)
        self._trim(stream)
        entries = [e for e in stream.entries if protocol.id_newer(e[0], after)][:limit]
        return HistoryPage(self._frames(entries), self._last(stream), True)

    async def last_id(self, room: str) -> str | None:
        return self._last(self.store.history(room))

    @staticmethod
    def _last(stream: MemoryStream) -> str | None:
        return stream.entries[-1][0] if stream.entries else None
