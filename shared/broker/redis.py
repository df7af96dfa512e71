"""Redis implementations of the broker interfaces (history, fan-out, presence, bot registry)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import protocol
from shared.broker.base import Appended, BrokerUnavailable, EventHandler, HistoryPage, PresenceChange
from shared.broker.redis_link import CommandPipe, Script
from shared.keys import Keys
from shared.models import Bot, BotStatus
from shared.settings import Settings

log = logging.getLogger(__name__)
APPEND = Script("append")
PRESENCE_JOIN = Script("presence_join")
PRESENCE_LEAVE = Script("presence_leave")
SET_STATUS = Script("set_status")
REPLIED_TTL = 7 * 24 * 3600  # a retried request older than this is unlikely; keep markers a week
SUBSCRIBE_BATCH = 256
WANTED_RUNNING = (BotStatus.STARTING.value, BotStatus.RUNNING.value)


def now_ms() -> int:
    return int(time.time() * 1000)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisFanOut:
    """One pub/sub connection per node; one channel per room with local members.

    ``subscribe`` returns once Redis confirmed the subscription, so a caller that reads history
    afterwards cannot miss an event published in between.
    """

    def __init__(self, client: aioredis.Redis, pipe: CommandPipe, keys: Keys, *, sharded: bool = False) -> None:
        self.client = client
        self.pipe = pipe
        self.keys = keys
        self.sharded = sharded
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self.handler: EventHandler | None = None
        self._rooms: dict[bytes, str] = {}  # channel -> room, for every room subscribed or subscribing
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}
        self.gap_handler: Callable[[], None] | None = None
        self._pubsub = _PubSub(client.connection_pool, on_reconnect=self._reconnected)
        # redis-py's PubSub opens a connection per concurrent first command; only the last is read
        self._commands = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def set_handler(self, handler: EventHandler) -> None:
        self.handler = handler

    def set_gap_handler(self, handler: Callable[[], None]) -> None:
        self.gap_handler = handler

    def _reconnected(self) -> None:
        # redis-py has resubscribed every channel; events published meanwhile were lost
        log.warning("pub/sub reconnected; %d rooms may have missed events", len(self._rooms))
        if self.gap_handler is not None:
            self.gap_handler()

    def subscriptions(self) -> int:
        return len(self._rooms)

    async def subscribe(self, room: str) -> None:
        channel = self.keys.channel(room).encode()
        if channel in self._rooms and channel not in self._confirmations:
            return
        self._rooms[channel] = room
        confirmation = self._confirmations.get(channel)
        if confirmation is None:
            confirmation = self._confirmations[channel] = asyncio.get_running_loop().create_future()
            try:
                async with self._commands:
                    await (self._pubsub.ssubscribe(channel) if self.sharded else self._pubsub.subscribe(channel))
            except (RedisError, OSError) as exc:
                self._rooms.pop(channel, None)
                self._confirmations.pop(channel, None)
                raise BrokerUnavailable(f"cannot subscribe: {exc}") from exc
        self._ensure_listener()
        await asyncio.wait_for(asyncio.shield(confirmation), 10)

    async def unsubscribe(self, room: str) -> None:
        channel = self.keys.channel(room).encode()
        if self._rooms.pop(channel, None) is None:
            return
        pending = self._confirmations.pop(channel, None)
        if pending is not None and not pending.done():
            pending.set_result(None)  # a subscribe() still waiting returns; cancelling would cancel its caller
        with contextlib.suppress(RedisError, OSError):
            async with self._commands:
                await (self._pubsub.sunsubscribe(channel) if self.sharded else self._pubsub.unsubscribe(channel))

    async def publish(self, room: str, packet: bytes) -> None:
        await self.pipe.call(self.publish_command, self.keys.channel(room), packet)

    def _ensure_listener(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="redis-fanout")

    async def _listen(self) -> None:
        # redis-py resubscribes every tracked channel by itself when the connection comes back
        backoff = 0.1
        while True:
            try:
                await self._read_forever()
                return  # no subscriptions left; the next subscribe starts a new listener
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.connected.clear()
                log.warning("pub/sub connection lost, reconnecting in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _read_forever(self) -> None:
        pubsub = self._pubsub
        while True:
            if not pubsub.subscribed:
                # nothing to read until the next subscribe; the listener is restarted then
                return
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            self.connected.set()
            kind = message["type"]
            if kind in ("message", "smessage"):
                room = self._rooms.get(message["channel"])
                if room is not None and self.handler is not None:
                    self.handler(room, message["data"])
            elif kind in ("subscribe", "ssubscribe"):
                confirmation = self._confirmations.pop(message["channel"], None)
                if confirmation is not None and not confirmation.done():
                    confirmation.set_result(None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.aclose()


class _PubSub(aioredis.client.PubSub):
    """redis-py's PubSub, telling its owner when a lost connection came back (not the first connect)."""

    def __init__(self, pool: Any, *, on_reconnect: Callable[[], None]) -> None:
        super().__init__(pool)
        self._on_reconnect = on_reconnect
        self._connects = 0

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)
        self._connects += 1
        if self._connects > 1:
            self._on_reconnect()


class RedisHistory:
    def __init__(self, pipe: CommandPipe, keys: Keys, settings: Settings, *, sharded: bool = False) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"

    async def append(self, room: str, tail: bytes, *, request: bool = False, reply_to: str | None = None) -> Appended:
        k = self.keys
        keys = [k.history(room), k.inbox(room), k.bot(room), k.replied(room, reply_to or "-")]
        args = [
            k.channel(room),
            tail,
            self.settings.history_max,
            int(self.settings.history_max_age * 1000),
            "1" if request else "0",
            reply_to or "",
            REPLIED_TTL,
            orjson.dumps(room),
            self.publish_command,
        ]
        message_id, duplicate, queued = await self.pipe.script(APPEND, keys, args)
        message_id = _text(message_id)
        return Appended(message_id, protocol.message_ts(message_id), duplicate=bool(duplicate), queued=bool(queued))

    @staticmethod
    def _entries(raw: list[Any]) -> list[tuple[str, bytes]]:
        entries = []
        for entry_id, fields in raw:
            message_id = _text(entry_id)
            tail = fields[b"t"] if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True))[b"t"]
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
    def __init__(self, pipe: CommandPipe, keys: Keys, *, sharded: bool = False) -> None:
        self.pipe = pipe
        self.keys = keys
        self.publish_command = "SPUBLISH" if sharded else "PUBLISH"

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
        if isinstance(raw, list):
            raw = dict(zip(raw[::2], raw[1::2], strict=True))
        return Bot.from_hash({_text(k): _text(v) for k, v in raw.items()})

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

    async def set_status(self, bot_id: str, status: BotStatus, error: str | None = None) -> Bot | None:
        bot = await self.get(bot_id)
        if bot is None:
            return None
        bot = bot.with_status(status, error)
        args = [status.value, error or "", self.keys.channel(bot_id), bot.status_frame(now_ms()), self.publish_command]
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
        await self.pipe.call("SET", self.keys.revoked(user), repr(at), "EX", max(1, int(ttl)))

    async def revoked_at(self, user: str) -> float | None:
        value = await self.pipe.call("GET", self.keys.revoked(user))
        return float(value) if value is not None else None
