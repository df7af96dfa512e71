"""In-memory broker: every node of one process shares a :class:`MemoryStore`.

Used by the single-process default mode and by tests. It is single-process only. It passes the
same contract suite as the Redis broker, including asynchronous delivery: handlers run from the
event loop after ``publish`` returns, as they would behind Redis.

This module holds the store with fan-out, presence, the bot registry and revocations; histories
are in ``memory_history``, and the other parts in the ``memory_*`` modules beside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from shared import packets
from shared.broker.base import EventHandler, PresenceChange
from shared.logs import Throttled
from shared.models import Bot, BotStatus
from shared.settings import Settings

log = logging.getLogger(__name__)

WANTED_RUNNING = (BotStatus.STARTING, BotStatus.RUNNING)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class MemoryStream:
    """An append-only log with Redis-style ids, used for histories and bot inboxes."""

    entries: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    last: tuple[int, int] = (0, 0)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, fields: dict[str, bytes]) -> str:
        ms = max(now_ms(), self.last[0])
        seq = self.last[1] + 1 if ms == self.last[0] else 0
        self.last = (ms, seq)
        entry_id = f"{ms}-{seq}"
        self.entries.append((entry_id, fields))
        self.changed.set()
        self.changed = asyncio.Event()
        return entry_id


class MemoryStore:
    """The shared state that Redis holds in the distributed mode."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.fanouts: list[MemoryFanOut] = []
        self.streams: dict[str, MemoryStream] = defaultdict(MemoryStream)
        self.replied: dict[tuple[str, str], str] = {}
        self.sent: dict[tuple[str, str, str], tuple[str, float]] = {}  # (room, user, client id) -> (id, expiry)
        # (room, reply_to) -> (attempt, seq, text, monotonic expiry) of replies being written
        self.replies_in_flight: dict[tuple[str, str], tuple[int, int, str, float]] = {}
        self.cancelled: dict[tuple[str, str], tuple[str, float]] = {}  # (room, request) -> (mark, expiry)
        self.cancel_handlers: list[Callable[[str, str], None]] = []
        self.bots: dict[str, Bot] = {}
        self.members: dict[str, set[str]] = defaultdict(set)
        self.presence: dict[str, dict[tuple[str, str], float]] = defaultdict(dict)
        self.revoked: dict[str, tuple[float, float]] = {}  # user -> (revoked at, forgotten at)
        self.control: list[asyncio.Event] = []  # set when the running set changes
        self.leases: dict[str, tuple[str, float]] = {}  # bot -> (owner, monotonic expiry)
        self.workers: dict[str, float] = {}  # live worker -> monotonic expiry of its heartbeat
        # the inboxes' consumer groups and dead letters, kept by memory_queue (whose type this module cannot name)
        self.queue_state: object = None

    def history(self, room: str) -> MemoryStream:
        return self.streams[f"history:{room}"]

    def inbox(self, bot: str) -> MemoryStream:
        return self.streams[f"inbox:{bot}"]

    def deliver(self, room: str, packet: bytes) -> None:
        loop = asyncio.get_running_loop()
        for fanout in self.fanouts:
            if room in fanout.rooms and fanout.handler is not None:
                loop.call_soon(fanout.call_handler, fanout.handler, room, packet)

    def notify_control(self) -> None:
        for event in self.control:
            event.set()


class MemoryFanOut:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.rooms: set[str] = set()
        self.handler: EventHandler | None = None
        self._failure_log = Throttled(log, 10.0)
        store.fanouts.append(self)

    def set_handler(self, handler: EventHandler) -> None:
        self.handler = handler

    def call_handler(self, handler: EventHandler, room: str, packet: bytes) -> None:
        try:
            handler(room, packet)
        except Exception:  # one event's loss, as on Redis (see EventHandler)
            self._failure_log.warning(
                room, "pub/sub handler failed on an event of %s; dropped it", room[:100], exc_info=True
            )

    def set_gap_handler(self, handler: Callable[[], None]) -> None:
        """Nothing is ever missed in one process."""

    async def subscribe(self, room: str) -> None:
        self.rooms.add(room)

    async def unsubscribe(self, room: str) -> None:
        self.rooms.discard(room)

    async def publish(self, room: str, packet: bytes) -> None:
        self.store.deliver(room, packet)

    def subscriptions(self) -> int:
        return len(self.rooms)

    def close(self) -> None:
        if self in self.store.fanouts:
            self.store.fanouts.remove(self)


class MemoryPresence:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    def _change(self, room: str, changed: bool) -> PresenceChange:
        users = sorted({user for user, _ in self.store.presence[room]})
        return PresenceChange(changed, users[: self.store.settings.presence_limit], len(users))

    def _present(self, room: str, user: str) -> bool:
        return any(u == user for u, _ in self.store.presence[room])

    async def join(self, room: str, user: str, connection: str) -> PresenceChange:
        await self.expire(room)
        first = not self._present(room, user)
        self.store.presence[room][(user, connection)] = time.monotonic() + self.store.settings.presence_ttl
        return self._change(room, first)

    async def leave(self, room: str, user: str, connection: str) -> PresenceChange:
        removed = self.store.presence[room].pop((user, connection), None) is not None
        return self._change(room, removed and not self._present(room, user))

    async def refresh(self, entries: list[tuple[str, str, str]]) -> None:
        expiry = time.monotonic() + self.store.settings.presence_ttl
        for room, user, connection in entries:
            if (user, connection) in self.store.presence[room]:
                self.store.presence[room][(user, connection)] = expiry

    async def expire(self, room: str) -> list[str]:
        now = time.monotonic()
        table = self.store.presence[room]
        expired = [key for key, expiry in table.items() if expiry < now]
        for key in expired:
            del table[key]
        return sorted({user for user, _ in expired if not self._present(room, user)})


class MemoryBotRegistry:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def create(self, bot: Bot) -> None:
        self.store.bots[bot.id] = bot

    async def get(self, bot_id: str) -> Bot | None:
        return self.store.bots.get(bot_id)

    async def members(self, bot_id: str) -> set[str]:
        return set(self.store.members.get(bot_id, ()))

    async def list_for(self, user: str, *, is_admin: bool) -> list[Bot]:
        bots = self.store.bots.values()
        visible = [b for b in bots if is_admin or b.owner == user or user in self.store.members.get(b.id, ())]
        return sorted(visible, key=lambda b: (b.created, b.id))

    async def delete(self, bot_id: str) -> None:
        bot = self.store.bots.pop(bot_id, None)
        self.store.members.pop(bot_id, None)
        for key in (f"history:{bot_id}", f"inbox:{bot_id}"):
            self.store.streams.pop(key, None)
        if bot is not None and bot.status in WANTED_RUNNING:
            self.store.notify_control()

    async def add_member(self, bot_id: str, user: str) -> None:
        self.store.members[bot_id].add(user)

    async def remove_member(self, bot_id: str, user: str) -> None:
        self.store.members[bot_id].discard(user)

    async def set_status(
        self, bot_id: str, status: BotStatus, error: str | None = None, *, expect: Collection[BotStatus] = ()
    ) -> Bot | None:
        bot = self.store.bots.get(bot_id)
        if bot is None or (expect and bot.status not in expect):
            return None
        was_wanted = bot.status in WANTED_RUNNING
        bot = self.store.bots[bot_id] = bot.with_status(status, error)
        self.store.deliver(bot_id, packets.pack(bot.status_frame(now_ms())))
        if was_wanted != (status in WANTED_RUNNING):
            self.store.notify_control()
        return bot

    async def running(self) -> set[str]:
        return {b.id for b in self.store.bots.values() if b.status in WANTED_RUNNING}


class MemoryRevocations:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def revoke(self, user: str, at: float, ttl: float) -> None:
        self.store.revoked[user] = (at, time.monotonic() + ttl)

    async def revoked_at(self, user: str) -> float | None:
        entry = self.store.revoked.get(user)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]
