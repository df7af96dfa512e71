"""Bot inboxes on Redis Streams: one consumer group per inbox.

How inboxes are read differs by deployment: that is the topology's inbox reader
(:mod:`shared.broker.redis_readers`). Everything else goes through the process's pipelining
:class:`CommandPipe`. Multi-step changes (ack + delete, dead-letter, reclaim with delivery
counts) are Lua scripts on keys of one bot, so they are atomic and stay in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

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
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import fields as _fields
from shared.broker.redis_replies import text as _text
from shared.broker.redis_topology import Topology
from shared.keys import Keys
from shared.settings import Settings

log = logging.getLogger(__name__)
DEAD_LETTERS_MAX = 10_000  # per bot, approximate: the oldest go first
RECLAIM = Script("reclaim")
FINISH = Script("finish")
RELEASE = Script("release")


class RedisBotQueue(BotQueue):
    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys, settings: Settings) -> None:
        self.pipe = pipe
        self.keys = keys
        self.settings = settings
        self.group = keys.group()
        # an ack's announcement goes to the bot's room as its fan-out would send it: sharded on a cluster
        self.publish_command = topology.publish_command
        self._inbox = topology.inbox_reader(pipe, keys, self.group)  # blocking, or on notice on a cluster

    # -- requests ------------------------------------------------------------------------
    async def ensure_group(self, bot: str) -> None:
        try:
            await self.pipe.execute("XGROUP", "CREATE", self.keys.inbox(bot), self.group, "0", "MKSTREAM")
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, bot: str, message_id: str, frame: bytes) -> str:
        key = self.keys.inbox(bot)
        entry_id = await self.pipe.execute("XADD", key, "*", "m", message_id, "f", frame)
        await self._inbox.queued(key)
        return _text(entry_id)

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]:
        if not bots:
            return []
        return await self._inbox.read(consumer, bots, block=block)

    async def wake(self) -> None:
        await self._inbox.wake()

    async def pending(self, bot: str) -> int:
        try:
            summary = await self.pipe.execute("XPENDING", self.keys.inbox(bot), self.group)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise
        return int(summary["pending"] if isinstance(summary, dict) else summary[0])

    async def reclaim(self, consumer: str, bot: str, *, min_idle: float, count: int = 1) -> list[Request]:
        args = [self.group, consumer, int(min_idle * 1000), count]
        try:
            claimed = await self.pipe.script(RECLAIM, [self.keys.inbox(bot)], args)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                raise GroupMissing(str(exc)) from None
            raise
        return [decode_request(bot, _text(eid), _fields(fields), int(n)) for eid, fields, n in claimed]

    async def retry(self, consumer: str, request: Request) -> Request | None:
        key = self.keys.inbox(request.bot)
        try:
            claimed = await self.pipe.execute("XCLAIM", key, self.group, consumer, 0, request.entry_id)
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return None
            raise
        return request.next_attempt() if claimed else None

    async def release(self, consumer: str, request: Request) -> None:
        idle = int(RELEASED_IDLE * 1000)
        key = self.keys.inbox(request.bot)
        with contextlib.suppress(ResponseError):  # no group: nothing to give back
            await self.pipe.script(RELEASE, [key], [self.group, consumer, request.entry_id, idle])

    async def _finish(
        self, request: Request, *, reply_stored: bool = False, announce: bytes | None = None, dead: Sequence[Any] = ()
    ) -> int:
        bot = request.bot
        keys = [self.keys.inbox(bot), self.keys.dead_letters(bot), self.keys.replied(bot, request.message_id or "-")]
        publish = [self.publish_command, self.keys.channel(bot), announce] if announce is not None else ["", "", ""]
        args = [self.group, request.entry_id, "1" if reply_stored else "0", *publish, *dead]
        return int(await self.pipe.script(FINISH, keys, args))

    async def ack(self, request: Request, *, reply_stored: bool = False, announce: bytes | None = None) -> bool:
        return await self._finish(request, reply_stored=reply_stored, announce=announce) == 1

    async def dead_letter(self, request: Request, reason: str) -> None:
        dead = [request.message_id, request.frame, reason, request.attempts, DEAD_LETTERS_MAX]
        await self._finish(request, dead=dead)

    async def dead_letters(self, bot: str, limit: int = 100) -> list[DeadLetter]:
        raw = await self.pipe.execute("XRANGE", self.keys.dead_letters(bot), "-", "+", "COUNT", limit)
        letters = []
        for entry_id, fields in raw:
            f = _fields(fields)
            letters.append(
                DeadLetter(_text(entry_id), _text(f[b"m"]), _text(f[b"reason"]), int(f[b"attempts"]), f[b"f"])
            )
        return letters

    async def backlog(self, bot: str) -> Backlog:
        key = self.keys.inbox(bot)
        length, pending, first = await asyncio.gather(
            self.pipe.call("XLEN", key), self.pending(bot), self.pipe.call("XRANGE", key, "-", "+", "COUNT", 1)
        )
        oldest = (time.time() * 1000 - id_key(_text(first[0][0]))[0]) / 1000 if first else 0.0
        return Backlog(int(length), pending, max(oldest, 0.0))

    async def answered(self, bot: str, message_id: str) -> bool:
        return bool(await self.pipe.execute("EXISTS", self.keys.replied(bot, message_id)))

    async def prune_consumers(self, bot: str, keep: str) -> None:
        key = self.keys.inbox(bot)
        try:
            consumers = await self.pipe.execute("XINFO", "CONSUMERS", key, self.group)
        except ResponseError:
            return  # no group: nothing to prune
        for consumer in consumers:
            name = _text(consumer[b"name"])
            if name != keep and int(consumer[b"pending"]) == 0:
                await self.pipe.execute("XGROUP", "DELCONSUMER", key, self.group, name)

    async def close(self) -> None:
        await self._inbox.close()
