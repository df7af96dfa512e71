"""How a worker reads its bots' inboxes: the part of the queue that differs between deployments.

One server (or Sentinel) takes one blocking XREADGROUP over every inbox, on a connection held
for it (a blocked read would hold up every command behind it on a shared one); ``wake`` ends it
with CLIENT UNBLOCK. A cluster refuses one XREADGROUP over streams in several slots, so there the
worker reads the inboxes it was told got requests (:class:`NoticeInboxReader`). The topology
picks one (:meth:`shared.broker.redis_topology.Topology.inbox_reader`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from shared.broker.base import BrokerUnavailable
from shared.broker.queue import GroupMissing, Request, decode_request
from shared.broker.redis_compat import HeldConnection
from shared.broker.redis_link import CommandPipe
from shared.broker.redis_pubsub import MessageHandler, Subscriber
from shared.broker.redis_replies import fields, streams, text
from shared.keys import Keys

SWEEP_SECONDS = 10.0  # on a cluster, every inbox is read at least this often, notice or not


class InboxReader(Protocol):
    """Delivers new requests of a set of bots to one consumer (see :meth:`BotQueue.read`)."""

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]: ...

    async def wake(self) -> None: ...

    async def queued(self, inbox: str) -> None:
        """A request was added to ``inbox`` outside the append script: tell readers that need telling."""

    async def close(self) -> None: ...


class BlockingInboxReader:
    """One blocking XREADGROUP over every inbox, on a connection of its own."""

    def __init__(self, client: aioredis.Redis, pipe: CommandPipe, keys: Keys, group: str) -> None:
        self.client = client  # gives a fresh held connection after a failure (asking Sentinel anew)
        self.pipe = pipe  # sends CLIENT UNBLOCK, which must not wait behind the blocked read
        self.keys = keys
        self.group = group
        self._reader = HeldConnection(client)  # held for blocking reads
        self._reader_id: int | None = None  # its CLIENT ID, for CLIENT UNBLOCK
        self._reading = False  # a blocking read is in flight
        self._woken = False  # a wake() that no blocked read took: the next read does not block
        self._last_read: tuple[Any, list[bytes], dict[bytes, str]] | None = None  # see _read_command

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]:
        block_ms = max(1, int(block * 1000)) if not self._woken and block > 0 else 0
        self._woken = False
        try:
            if self._reader_id is None:
                self._reader_id = await self._reader.client_id()  # connects the held connection too
            command, by_key = self._read_command(consumer, bots, block_ms)
            self._reading = True
            # straight on the held connection: the read is one command, packed once while the bots
            # stay the same, and needs none of the client's per-command machinery
            raw = await self._reader.send(command)
        except ResponseError as exc:
            # NOGROUP: the inbox is gone; UNBLOCKED: it was deleted while the read waited on it
            if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise GroupMissing(str(exc)) from None
            raise
        except (RedisError, OSError) as exc:
            self._reader_id = None
            # a held connection reconnects to its old address; one from the pool asks Sentinel for the master
            reader, self._reader = self._reader, HeldConnection(self.client)
            with contextlib.suppress(RedisError, OSError):
                await reader.close()
            raise BrokerUnavailable(f"cannot read the inboxes: {exc}") from exc
        finally:
            self._reading = False
        return [
            decode_request(by_key[key], text(entry_id), fields(entry), 1)
            for key, entries in streams(raw)
            for entry_id, entry in entries
        ]

    def _read_command(self, consumer: str, bots: Sequence[str], block_ms: int) -> tuple[list[bytes], dict[bytes, str]]:
        """The packed XREADGROUP over ``bots`` and the bot of each inbox key; kept while they stay the same."""
        wanted = (consumer, tuple(bots), block_ms)
        if self._last_read is None or self._last_read[0] != wanted:
            inboxes = [self.keys.inbox(bot) for bot in bots]
            args: list[Any] = ["XREADGROUP", "GROUP", self.group, consumer, "COUNT", 1]
            if block_ms:
                args += ["BLOCK", block_ms]
            args += ["STREAMS", *inboxes, *[">"] * len(inboxes)]
            by_key = {key.encode(): bot for key, bot in zip(inboxes, bots, strict=True)}
            self._last_read = (wanted, self._reader.pack(*args), by_key)
        return self._last_read[1], self._last_read[2]

    async def wake(self) -> None:
        if self._reading and self._reader_id is not None:
            with contextlib.suppress(RedisError, BrokerUnavailable):
                if await self.pipe.execute("CLIENT", "UNBLOCK", self._reader_id):
                    return
            # not blocked yet, or the connection was replaced (new id): fall back to the read's timeout
            self._reader_id = None
        self._woken = True

    async def queued(self, inbox: str) -> None:
        """A blocked XREADGROUP sees new entries by itself."""

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._reader.close()


class _InboxNotices:
    """Which inboxes got requests, told on a sharded channel named like the inbox key.

    The append script SPUBLISHes to the inbox's own name when it queues a request; the worker
    holds those subscriptions, reads only the inboxes it was told about, and waits for the next
    notice. Inboxes newly watched, or watched across a pub/sub gap, are read once without a notice,
    and all of them every ``SWEEP_SECONDS``.
    """

    def __init__(self, subscriber: Callable[[MessageHandler], Subscriber]) -> None:
        self._subscriber = subscriber(self._notice)
        self._subscriber.on_gap = self._missed
        self._watched: set[str] = set()
        self._due: set[str] = set()  # inbox keys to read on the next read
        self._changed = asyncio.Event()  # a notice, a gap or a wake() arrived
        self._last_sweep = 0.0

    def _notice(self, channel: bytes, _: bytes) -> None:
        self._due.add(channel.decode())
        self._changed.set()

    def _missed(self) -> None:
        self._last_sweep = 0.0
        self._changed.set()

    def wake(self) -> None:
        self._changed.set()

    async def watch(self, inboxes: Collection[str]) -> None:
        """Hold the notice subscriptions of exactly ``inboxes``; raises BrokerUnavailable."""
        wanted = set(inboxes)
        for key in self._watched - wanted:
            self._watched.discard(key)
            await self._subscriber.unsubscribe(key.encode())
        added = sorted(wanted - self._watched)
        results = await asyncio.gather(*(self._subscriber.subscribe(k.encode()) for k in added), return_exceptions=True)
        for key, result in zip(added, results, strict=True):
            if not isinstance(result, BaseException):
                self._watched.add(key)
                self._due.add(key)  # requests queued before the subscription held have sent no notice
        errors = [result for result in results if isinstance(result, BaseException)]
        if errors:
            raise errors[0]

    def take(self, inboxes: Collection[str]) -> list[str]:
        """The inboxes to read now; forgets their notices. Call after ``arm``."""
        if time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            self._last_sweep = time.monotonic()
            self._due.clear()
            return list(inboxes)
        due = [key for key in inboxes if key in self._due]
        self._due.difference_update(due)
        return due

    def arm(self) -> None:
        """Forget earlier wake-ups: a notice from now on ends the next ``wait``."""
        self._changed.clear()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def again(self, key: str) -> None:
        """Read ``key`` again next time (one request was taken, more may wait)."""
        self._due.add(key)

    async def close(self) -> None:
        await self._subscriber.close()


class NoticeInboxReader:
    """Reads, without blocking, the inboxes a notice named; waits for the next notice in between."""

    def __init__(
        self, subscriber: Callable[[MessageHandler], Subscriber], pipe: CommandPipe, keys: Keys, group: str
    ) -> None:
        self.pipe = pipe
        self.keys = keys
        self.group = group
        self._notices = _InboxNotices(subscriber)
        self._woken = False  # a wake() that came while no read waited: the next read does not wait

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]:
        by_key = {self.keys.inbox(bot): bot for bot in bots}
        await self._notices.watch(by_key)
        self._notices.arm()
        requests = await self._read_inboxes(consumer, self._notices.take(by_key), by_key)
        if not requests and block > 0 and not self._woken:
            await self._notices.wait(block)
            requests = await self._read_inboxes(consumer, self._notices.take(by_key), by_key)
        self._woken = False
        return requests

    async def _read_inboxes(self, consumer: str, inboxes: list[str], by_key: dict[str, str]) -> list[Request]:
        """One request from each of ``inboxes`` without blocking: one pipelined XREADGROUP per inbox."""
        calls = [
            self.pipe.call("XREADGROUP", "GROUP", self.group, consumer, "COUNT", 1, "STREAMS", k, ">") for k in inboxes
        ]
        replies = await asyncio.gather(*calls, return_exceptions=True)
        requests = []
        for reply in replies:
            if isinstance(reply, ResponseError) and "NOGROUP" in str(reply):
                raise GroupMissing(str(reply))
            if isinstance(reply, BaseException):
                raise reply
            for key, entries in streams(reply):
                self._notices.again(text(key))  # it had one; more may wait
                bot = by_key[text(key)]
                requests += [decode_request(bot, text(eid), fields(entry), 1) for eid, entry in entries]
        return requests

    async def wake(self) -> None:
        self._woken = True
        self._notices.wake()

    async def queued(self, inbox: str) -> None:
        # the notice the append script sends, on the shard channel named like the inbox (same slot)
        await self.pipe.execute("SPUBLISH", inbox, "")

    async def close(self) -> None:
        await self._notices.close()
