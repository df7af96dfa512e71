"""In-memory bot inboxes for the single-process mode: the inbox streams of a :class:`MemoryStore`.

Single-process only. Group positions and pending requests live on the store
(every queue built on one store sees the same state, as every worker sees the same Redis), and
the behaviour mirrors the Redis consumer group closely enough to pass the same contract suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.broker.memory import MemoryStore, MemoryStream, now_ms
from shared.broker.queue import (
    RELEASED_IDLE,
    Backlog,
    BotQueue,
    DeadLetter,
    GroupMissing,
    Request,
    decode_request,
    id_key,
)
from shared.settings import Settings


@dataclass
class _Pending:
    consumer: str
    delivered: float  # monotonic time of the last delivery, for idle times
    count: int  # deliveries so far


@dataclass
class _Group:
    stream: MemoryStream  # the inbox this group reads; a deleted bot's inbox is replaced by a new one
    last: tuple[int, int] = (0, 0)  # the newest entry delivered
    pending: dict[str, _Pending] = field(default_factory=dict)
    consumers: set[str] = field(default_factory=set)


@dataclass
class _QueueState:
    """What Redis keeps for the queues, shared by every queue of one store."""

    groups: dict[str, _Group] = field(default_factory=dict)
    dead: dict[str, MemoryStream] = field(default_factory=dict)


def _state(store: MemoryStore) -> _QueueState:
    state = store.queue_state
    if not isinstance(state, _QueueState):
        state = store.queue_state = _QueueState()
    return state


def _fields(raw: dict[str, bytes]) -> dict[bytes, bytes]:
    return {key.encode(): value for key, value in raw.items()}


class MemoryBotQueue(BotQueue):
    def __init__(self, store: MemoryStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.state = _state(store)
        self._waiters: set[asyncio.Event] = set()  # reads waiting now, woken by wake()
        self._woken = False  # a wake() that came while no read was waiting

    def _group(self, bot: str) -> _Group:
        group = self.state.groups.get(bot)
        if group is None or group.stream is not self.store.inbox(bot):
            raise GroupMissing(bot)
        return group

    async def ensure_group(self, bot: str) -> None:
        stream = self.store.inbox(bot)
        group = self.state.groups.get(bot)
        if group is None or group.stream is not stream:
            self.state.groups[bot] = _Group(stream)

    async def enqueue(self, bot: str, message_id: str, frame: bytes) -> str:
        return self.store.inbox(bot).add({"m": message_id.encode(), "f": frame})

    def _take_new(self, consumer: str, bot: str) -> Request | None:
        group = self._group(bot)
        for entry_id, raw in group.stream.entries:
            key = id_key(entry_id)
            if key > group.last:
                group.last = key
                group.pending[entry_id] = _Pending(consumer, time.monotonic(), 1)
                group.consumers.add(consumer)
                return decode_request(bot, entry_id, _fields(raw), 1)
        return None

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]:
        deadline = time.monotonic() + block
        while True:
            changes = [self._group(bot).stream.changed for bot in bots]
            taken = [self._take_new(consumer, bot) for bot in bots]
            requests = [request for request in taken if request is not None]
            remaining = deadline - time.monotonic()
            if requests or self._woken or remaining <= 0:
                self._woken = False
                return requests
            await self._wait_any(changes, remaining)

    async def _wait_any(self, events: list[asyncio.Event], timeout: float) -> None:
        woken = asyncio.Event()
        self._waiters.add(woken)
        waits = [asyncio.ensure_future(event.wait()) for event in (*events, woken)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters.discard(woken)
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if woken.is_set():
            self._woken = True

    async def wake(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                waiter.set()
        else:
            self._woken = True

    async def pending(self, bot: str) -> int:
        group = self.state.groups.get(bot)
        return len(group.pending) if group is not None and group.stream is self.store.inbox(bot) else 0

    def _entry(self, group: _Group, entry_id: str) -> dict[str, bytes] | None:
        return next((raw for eid, raw in group.stream.entries if eid == entry_id), None)

    async def reclaim(self, consumer: str, bot: str, *, min_idle: float, count: int = 1) -> list[Request]:
        group = self._group(bot)
        now = time.monotonic()
        claimed: list[Request] = []
        for entry_id in sorted(group.pending, key=id_key):
            if len(claimed) >= count:
                break
            entry = group.pending[entry_id]
            if now - entry.delivered < min_idle:
                continue
            raw = self._entry(group, entry_id)
            if raw is None:
                del group.pending[entry_id]  # its message was deleted
                continue
            entry.consumer, entry.delivered, entry.count = consumer, now, entry.count + 1
            group.consumers.add(consumer)
            claimed.append(decode_request(bot, entry_id, _fields(raw), entry.count))
        return claimed

    async def retry(self, consumer: str, request: Request) -> Request | None:
        group = self.state.groups.get(request.bot)
        entry = group.pending.get(request.entry_id) if group is not None else None
        if group is None or entry is None or self._entry(group, request.entry_id) is None:
            return None
        entry.consumer, entry.delivered, entry.count = consumer, time.monotonic(), entry.count + 1
        return request.next_attempt()

    async def release(self, consumer: str, request: Request) -> None:
        group = self.state.groups.get(request.bot)
        entry = group.pending.get(request.entry_id) if group is not None else None
        if entry is not None:
            entry.delivered = time.monotonic() - RELEASED_IDLE

    def _forget(self, request: Request) -> bool:
        group = self.state.groups.get(request.bot)
        if group is None:
            return False
        group.pending.pop(request.entry_id, None)
        before = len(group.stream.entries)
        group.stream.entries[:] = [e for e in group.stream.entries if e[0] != request.entry_id]
        return len(group.stream.entries) < before

    async def ack(self, request: Request, *, reply_stored: bool = False, announce: bytes | None = None) -> bool:
        if reply_stored and (request.bot, request.message_id) not in self.store.replied:
            return False
        forgotten = self._forget(request)
        if forgotten and announce is not None:
            self.store.deliver(request.bot, announce)
        return forgotten

    async def dead_letter(self, request: Request, reason: str) -> None:
        if self._forget(request):
            fields = {"m": request.message_id.encode(), "f": request.frame}
            fields |= {"reason": reason.encode(), "attempts": str(request.attempts).encode()}
            self.state.dead.setdefault(request.bot, MemoryStream()).add(fields)

    async def dead_letters(self, bot: str, limit: int = 100) -> list[DeadLetter]:
        stream = self.state.dead.get(bot)
        entries = stream.entries[:limit] if stream is not None else []
        return [
            DeadLetter(eid, f["m"].decode(), f["reason"].decode(), int(f["attempts"]), f["f"]) for eid, f in entries
        ]

    async def backlog(self, bot: str) -> Backlog:
        entries = self.store.inbox(bot).entries
        oldest = (now_ms() - id_key(entries[0][0])[0]) / 1000 if entries else 0.0
        return Backlog(len(entries), await self.pending(bot), max(oldest, 0.0))

    async def answered(self, bot: str, message_id: str) -> bool:
        return (bot, message_id) in self.store.replied

    async def prune_consumers(self, bot: str, keep: str) -> None:
        group = self.state.groups.get(bot)
        if group is not None:
            busy = {entry.consumer for entry in group.pending.values()}
            group.consumers = {c for c in group.consumers if c == keep or c in busy}

    async def close(self) -> None:
        """Nothing to let go of: the state is the store's."""
