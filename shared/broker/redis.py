"""Redis implementations of the broker interfaces: fan-out, presence, bot registry, revocations.

Histories are in ``redis_history``, and the other parts in the ``redis_*`` modules beside it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Collection
from typing import Any

from shared import packets
from shared.broker.base import BrokerUnavailable, EventHandler, PresenceChange
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import fields as _fields
from shared.broker.redis_replies import text as _text
from shared.broker.redis_topology import Topology
from shared.keys import Keys
from shared.models import Bot, BotStatus
from shared.settings import Settings

log = logging.getLogger(__name__)
PRESENCE_JOIN = Script("presence_join")
PRESENCE_LEAVE = Script("presence_leave")
SET_STATUS = Script("set_status")
WANTED_RUNNING = (BotStatus.STARTING.value, BotStatus.RUNNING.value)


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
