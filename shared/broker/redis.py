"""Redis implementations of the broker interfaces (history, fan-out, presence, bot registry)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any

from shared import packets, protocol
from shared.broker.base import (
    Appended,
    BrokerUnavailable,
    ClientId,
    EventHandler,
    HistoryPage,
    InboxFull,
    PresenceChange,
    ReplyCancelled,
)
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import fields as _fields
from shared.broker.redis_replies import text as _text
from shared.broker.redis_topology import Topology
from shared.keys import Keys
from shared.models import Bot, BotStatus
from shared.settings import Settings

log = logging.getLogger(__name__)
APPEND = Script("append")
PRESENCE_JOIN = Script("presence_join")
PRESENCE_LEAVE = Script("presence_leave")
SET_STATUS = Script("set_status")
REPLIED_TTL = 7 * 24 * 3600  # a retried request older than this is unlikely; keep markers a week
WANTED_RUNNING = (BotStatus.STARTING.value, BotStatus.RUNNING.value)
# the frames of an append are written here, with holes (NUL bytes, which JSON never holds raw)
# where append.lua puts the id and the time Redis gave: frames (holes: id, ts), header (hole: id)
HOLE = "\0"
PACKET_HEADER = packets.pack(b"", message_id=HOLE)


def now_ms() -> int:
    return int(time.time() * 1000)


class RedisFanOut:
    """One channel per room with local members, on the node's pub/sub connections.

    ``subscribe`` returns once Redis confirmed the subscription, so a caller that reads history
    afterwards cannot miss an event published in between. The topology chooses the channels: on
    a cluster they are sharded, so an event only travels to the primary that owns the room's slot.
    """

    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys) -> None:
        self.pipe = pipe
        self.keys = keys
        self.publish_command = topology.publish_command
        self.handler: EventHandler | None = None
        self._rooms: dict[bytes, str] = {}  # channel -> room, for every room subscribed or subscribing
        self._subscriber = topology.subscriber(self._message)

    def set_handler(self, handler: EventHandler) -> None:
        self.handler = handler

    def set_gap_handler(self, handler: Callable[[], None]) -> None:
        self._subscriber.on_gap = handler

    def subscriptions(self) -> int:
        return len(self._rooms)

    def _message(self, channel: bytes, packet: bytes) -> None:
        room = self._rooms.get(channel)
        if room is not None and self.handler is not None:
            self.handler(room, packet)

    async def subscribe(self, room: str) -> None:
        channel = self.keys.channel(room).encode()
        self._rooms[channel] = room
        try:
            await self._subscriber.subscribe(channel)
        except BrokerUnavailable:
            self._rooms.pop(channel, None)
            raise

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.channel(room).encode()
        if self._rooms.pop(channel, None) is not None:
            await self._subscriber.unsubscribe(channel)

    async def publish(self, room: str, packet: bytes) -> None:
        await self.pipe.call(self.publish_command, self.keys.channel(room), packet)

    async def close(self) -> None:
        await self._subscriber.close()


class RedisHistory:
    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys, settings: Settings) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings
        self.publish_command = topology.publish_command  # the fan-out's: the appended message goes out as its events do
        self.inbox_notices = topology.inbox_notices  # a queued request is announced to readers on a cluster

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
        k = self.keys
        if client_id is not None:
            marker, marker_ttl = k.sent(room, client_id.user, client_id.id), math.ceil(self.settings.client_id_window)
        else:
            marker, marker_ttl = k.replied(room, reply_to or "-"), REPLIED_TTL
        keys = [
            k.history(room),
            k.inbox(room),
            k.bot(room),
            marker,
            k.stream(room, reply_to or "-"),
            k.streams(room),
            k.cancel(room, reply_to or "-"),
            k.stream_text(room, reply_to or "-"),
        ]
        args = [
            k.channel(room),
            tail,
            protocol.compose_message(HOLE, tail),
            protocol.compose_message(HOLE, tail, queued=True) if request else b"",
            PACKET_HEADER,
            self.settings.history_max,
            int(self.settings.history_max_age * 1000),
            "1" if request else "0",
            "1" if reply_to is not None or client_id is not None else "0",
            marker_ttl,
            self.publish_command,
            self.settings.inbox_max,
            "1" if self.inbox_notices else "0",
            reply_to or "",
            "1" if cancelled else "0",
        ]
        message_id, duplicate, queued = await self.pipe.script(APPEND, keys, args)
        message_id = _text(message_id)
        if not message_id:
            raise ReplyCancelled(reply_to) if duplicate else InboxFull(room)
        return Appended(message_id, protocol.message_ts(message_id), duplicate=bool(duplicate), queued=bool(queued))

    @staticmethod
    def _entries(raw: list[Any]) -> list[tuple[str, bytes]]:
        entries = []
        for entry_id, fields in raw:
            message_id = _text(entry_id)
            tail = _fields(fields)[b"t"]
            entries.append((message_id, protocol.compose_message(message_id, tail)))
        return entries

    async def read_after(self, room: str, since: str, limit: int) -> HistoryPage:
        key = self.keys.history(room)
        after, newest = await asyncio.gather(
            self.pipe.call("XRANGE", key, since, "+", "COUNT", limit + 1),
            self.pipe.call("XREVRANGE", key, "+", "-", "COUNT", 1),
        )
        entries = self._entries(after)
        last_id = _text(newest[0][0]) if newest else None
        complete = bool(entries) and entries[0][0] == since
        if complete:
            entries = entries[1:]
        elif not entries and last_id is not None and protocol.id_newer(since, last_id):
            complete = True  # newer than every kept message: trimming only drops older ones, so nothing was missed
        if entries and last_id is not None and entries[-1][0] != last_id and len(entries) >= limit:
            # more than ``limit`` messages were missed: replay the newest ones, never a prefix with a gap after it
            latest = await self.read_latest(room, limit)
            return HistoryPage([e for e in latest.entries if protocol.id_newer(e[0], since)], latest.last_id, False)
        return HistoryPage(entries, last_id, complete)

    async def read_latest(self, room: str, limit: int) -> HistoryPage:
        raw = await self.pipe.call("XREVRANGE", self.keys.history(room), "+", "-", "COUNT", limit)
        entries = self._entries(raw)[::-1]
        return HistoryPage(entries, entries[-1][0] if entries else None, True)

    async def read_range(self, room: str, after: str, limit: int) -> HistoryPage:
        key = self.keys.history(room)
        raw, newest = await asyncio.gather(
            self.pipe.call("XRANGE", key, f"({after}", "+", "COUNT", limit),
            self.pipe.call("XREVRANGE", key, "+", "-", "COUNT", 1),
        )
        return HistoryPage(self._entries(raw), _text(newest[0][0]) if newest else None, True)

    async def last_id(self, room: str) -> str | None:
        raw = await self.pipe.call("XREVRANGE", self.keys.history(room), "+", "-", "COUNT", 1)
        return _text(raw[0][0]) if raw else None


class RedisPresence:
    def __init__(self, pipe: CommandPipe, keys: Keys, settings: Settings) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings

    def _keys(self, room: str) -> list[str]:
        return [self.keys.presence_connections(room), self.keys.presence_users(room)]

    def _expiry(self) -> int:
        return now_ms() + int(self.settings.presence_ttl * 1000)

    async def join(self, room: str, user: str, connection: str) -> PresenceChange:
        member = f"{user}\x1f{connection}"
        args = [member, user, self._expiry(), self.settings.presence_limit]
        first, count, members = await self.pipe.script(PRESENCE_JOIN, self._keys(room), args)
        return PresenceChange(bool(first), sorted(_text(m) for m in members), int(count))

    async def leave(self, room: str, user: str, connection: str) -> PresenceChange:
        gone, count = await self.pipe.script(PRESENCE_LEAVE, self._keys(room), [f"{user}\x1f{connection}", user, 0])
        return PresenceChange(bool(gone), [], int(count))

    async def refresh(self, entries: list[tuple[str, str, str]]) -> None:
        expiry = self._expiry()
        calls = [
            self.pipe.call("ZADD", self.keys.presence_connections(room), "XX", expiry, f"{user}\x1f{conn}")
            for room, user, conn in entries
        ]
        await asyncio.gather(*calls)

    async def expire(self, room: str) -> list[str]:
        gone, _ = await self.pipe.script(PRESENCE_LEAVE, self._keys(room), ["", "", now_ms()])
        return sorted(_text(u) for u in gone)


class RedisBotRegistry:
    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys) -> None:
        self.pipe = pipe
        self.keys = keys
        self.publish_command = topology.publish_command  # for bot_status frames to the room

    async def create(self, bot: Bot) -> None:
        fields = [item for pair in bot.to_hash().items() for item in pair]
        await asyncio.gather(
            self.pipe.call("HSET", self.keys.bot(bot.id), *fields),
            self.pipe.call("SADD", self.keys.all_bots(), bot.id),
            self.pipe.call("SADD", self.keys.user_bots(bot.owner), bot.id),
        )

    async def get(self, bot_id: str) -> Bot | None:
        raw = await self.pipe.call("HGETALL", self.keys.bot(bot_id))
        return self._bot(raw)

    @staticmethod
    def _bot(raw: Any) -> Bot | None:
        if not raw:
            return None
        return Bot.from_hash({_text(k): _text(v) for k, v in _fields(raw).items()})

    async def members(self, bot_id: str) -> set[str]:
        return {_text(m) for m in await self.pipe.call("SMEMBERS", self.keys.members(bot_id))}

    async def list_for(self, user: str, *, is_admin: bool) -> list[Bot]:
        index = self.keys.all_bots() if is_admin else self.keys.user_bots(user)
        ids = sorted(_text(i) for i in await self.pipe.call("SMEMBERS", index))
        raws = await asyncio.gather(*(self.pipe.call("HGETALL", self.keys.bot(i)) for i in ids))
        bots = [bot for bot in map(self._bot, raws) if bot is not None]
        return sorted(bots, key=lambda b: (b.created, b.id))

    async def delete(self, bot_id: str) -> None:
        bot = await self.get(bot_id)
        members = await self.members(bot_id)
        k = self.keys
        calls = [
            self.pipe.call("DEL", k.bot(bot_id), k.members(bot_id), k.history(bot_id), k.inbox(bot_id), k.lease(bot_id))
        ]
        calls += [self.pipe.call("SREM", k.all_bots(), bot_id), self.pipe.call("SREM", k.running_bots(), bot_id)]
        calls += [
            self.pipe.call("SREM", k.user_bots(user), bot_id) for user in {*members, *([bot.owner] if bot else [])}
        ]
        await asyncio.gather(*calls)
        await self.pipe.call("PUBLISH", k.control_channel(), bot_id)

    async def add_member(self, bot_id: str, user: str) -> None:
        await asyncio.gather(
            self.pipe.call("SADD", self.keys.members(bot_id), user),
            self.pipe.call("SADD", self.keys.user_bots(user), bot_id),
        )

    async def remove_member(self, bot_id: str, user: str) -> None:
        await asyncio.gather(
            self.pipe.call("SREM", self.keys.members(bot_id), user),
            self.pipe.call("SREM", self.keys.user_bots(user), bot_id),
        )

    async def set_status(
        self, bot_id: str, status: BotStatus, error: str | None = None, *, expect: Collection[BotStatus] = ()
    ) -> Bot | None:
        bot = await self.get(bot_id)
        if bot is None:
            return None
        bot = bot.with_status(status, error)
        packet = packets.pack(bot.status_frame(now_ms()))
        args = [status.value, error or "", self.keys.channel(bot_id), packet, self.publish_command, ",".join(expect)]
        if not await self.pipe.script(SET_STATUS, [self.keys.bot(bot_id)], args):
            return None
        wanted = "SADD" if status.value in WANTED_RUNNING else "SREM"
        if await self.pipe.call(wanted, self.keys.running_bots(), bot_id):
            await self.pipe.call("PUBLISH", self.keys.control_channel(), bot_id)
        return bot

    async def running(self) -> set[str]:
        return {_text(b) for b in await self.pipe.call("SMEMBERS", self.keys.running_bots())}


class RedisRevocations:
    def __init__(self, pipe: CommandPipe, keys: Keys) -> None:
        self.pipe = pipe
        self.keys = keys

    async def revoke(self, user: str, at: float, ttl: float) -> None:
        # milliseconds, rounded up: a revocation must never end before ``ttl`` (EX would drop the fraction)
        await self.pipe.call("SET", self.keys.revoked(user), repr(at), "PX", max(1, math.ceil(ttl * 1000)))

    async def revoked_at(self, user: str) -> float | None:
        value = await self.pipe.call("GET", self.keys.revoked(user))
        return float(value) if value is not None else None
