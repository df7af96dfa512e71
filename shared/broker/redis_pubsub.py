"""Pub/sub connections to Redis: :class:`Subscriber` holds every channel on one connection.

That serves a single server and Sentinel (whose pool reconnects to whichever server is the
master then). A cluster holds shard channels on one connection per primary instead:
:class:`shared.broker.redis_shards.ShardedSubscriber`, built on the same links. Which one a
deployment uses is its topology's choice (:mod:`shared.broker.redis_topology`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import AskError, MovedError, RedisError, ResponseError

from shared.broker.base import BrokerUnavailable
from shared.broker.redis_compat import (
    ReportingPubSub,
    by_slot,
    close_pubsub,
    drop_connection,
    forget_channel,
    next_event,
    tracked_channels,
)
from shared.broker.redis_link import LINK_ERRORS
from shared.logs import Throttled

log = logging.getLogger(__name__)
CONFIRM_TIMEOUT = 10.0
RESTART_CALM = 10.0  # a read loop that ran this long before dying is restarted without a pause
HANDLER_LOG_INTERVAL = 10.0  # seconds between two warnings of failing handlers on one channel
MessageHandler = Callable[[bytes, bytes], None]
"""Called with (channel, data) for every message of a subscribed channel; must not block.

What it raises is counted and logged, and the message is dropped: one bad message never ends the read loop."""


class Link:
    """One pub/sub connection holding plain channels (SUBSCRIBE), and the task that reads it."""

    shard: ClassVar[bool] = False  # holds shard channels (SSUBSCRIBE) instead

    def __init__(self, name: str, pool: ConnectionPool, owner: Subscriber, *, owns_pool: bool) -> None:
        self.name = name  # the cluster node's "host:port", or "" for the only connection
        self.pool = pool
        self.owner = owner
        self.owns_pool = owns_pool  # a pool made for this node, closed with the link
        self.pubsub = ReportingPubSub(pool, on_reconnect=owner.reconnected)
        # redis-py's PubSub opens a connection per concurrent first command; only the last is read
        self._commands = asyncio.Lock()
        # channels for the next SUBSCRIBE, and the future resolved once it went out
        self._next_batch: tuple[list[bytes], asyncio.Future[None]] | None = None
        self._senders: set[asyncio.Task[None]] = set()  # the tasks sending them (kept from GC)
        self._task: asyncio.Task[None] | None = None
        self._closed = False  # set by close(): a read loop that ends then is not restarted
        self._restarted = -RESTART_CALM  # when the read loop was last restarted (monotonic)
        self._restart_delay = 0.0

    def channels(self) -> dict[Any, Any]:
        """The channels redis-py tracks on this connection (and subscribes again after a reconnect)."""
        return tracked_channels(self.pubsub, shard=self.shard)

    async def _send_subscribe(self, channels: list[bytes]) -> None:
        await self.pubsub.subscribe(*channels)

    async def _send_unsubscribe(self, channel: bytes) -> None:
        await self.pubsub.unsubscribe(channel)

    async def subscribe(self, channel: bytes) -> None:
        """SUBSCRIBE ``channel`` with the others asked for in this loop turn: in a reconnect storm one
        command and one write carry many rooms' channels. Each is confirmed on its own (``confirmed``)."""
        waiting = self._next_batch
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._next_batch = ([], loop.create_future())
            waiting[1].add_done_callback(_retrieved)  # its callers may all be gone by then
            # the task's first step comes after the callbacks ready now: the batch fills meanwhile
            self._senders.add(sender := loop.create_task(self._send_batch(waiting)))
            sender.add_done_callback(self._senders.discard)
        waiting[0].append(channel)
        await asyncio.shield(waiting[1])
        if self._task is None or self._task.done():
            self._start_reading()

    async def _send_batch(self, batch: tuple[list[bytes], asyncio.Future[None]]) -> None:
        channels, sent = batch
        try:
            async with self._commands:
                if self._next_batch is batch:
                    self._next_batch = None  # from here on, channels go into the next one
                await self._send_subscribe(channels)
        except Exception as exc:
            sent.set_exception(exc)  # each caller gets the link error
        except BaseException:  # the link is closing
            sent.set_exception(BrokerUnavailable("the pub/sub connection is closing"))
            raise
        else:
            sent.set_result(None)

    def _start_reading(self, *, rebuild: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(self._read(rebuild=rebuild), name=f"redis-pubsub {self.name}")
        task.add_done_callback(self._reading_ended)
        self._task = task

    def _reading_ended(self, task: asyncio.Task[None]) -> None:
        """Restart a read loop that died: a node whose loop is gone would hear nothing, and say nothing of it."""
        if task.cancelled() or task.exception() is None or self._closed:
            return
        log.error("pub/sub read loop of %s died; restarting it", self.name or "redis", exc_info=task.exception())
        self.owner.restarts += 1
        now = time.monotonic()
        # at once the first time; a loop that keeps dying is restarted with a growing pause, not in a hot loop
        self._restart_delay = (
            0.0 if now - self._restarted > RESTART_CALM else min(5.0, max(0.1, 2 * self._restart_delay))
        )
        self._restarted = now
        self._start_reading(rebuild=True)

    async def unsubscribe(self, channel: bytes) -> None:
        async with self._commands:
            await self._send_unsubscribe(channel)

    def forget(self, channel: bytes) -> None:
        """Stop tracking a channel the server no longer holds for us (its slot moved, or the node died)."""
        forget_channel(self.pubsub, channel, shard=self.shard)

    async def _read(self, *, rebuild: bool = False) -> None:
        """Read and dispatch until nothing is subscribed; errors of the link are retried here, others end the task."""
        if rebuild:
            if self._restart_delay:
                await asyncio.sleep(self._restart_delay)
            # the dead loop may have left a reply half read: start on a fresh connection, which
            # subscribes every tracked channel again and reports the gap (see ReportingPubSub)
            await drop_connection(self.pubsub)
        backoff = 0.1
        while self.pubsub.subscribed:  # with nothing left to read, the next subscribe starts a new reader
            try:
                message = await next_event(self.pubsub)
            except (MovedError, AskError) as exc:
                # a subscription reached a node that no longer owns the channel's slot
                log.info("pub/sub channel moved (%s); reading the cluster's slots again", exc)
                self.owner.trouble()
                continue
            except ResponseError as exc:
                log.warning("pub/sub command refused by %s: %s", self.name or "redis", exc)
                continue
            except (RedisError, OSError) as exc:
                log.warning("pub/sub connection %s lost, reconnecting in %.1fs: %s", self.name, backoff, exc)
                self.owner.trouble()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if isinstance(message, tuple):
                try:
                    self.owner.on_message(*message)
                except Exception:  # a handler's failure is one message's loss, never the loop's end
                    self.owner.handler_failed(message[0])
            elif message is not None:
                try:
                    self._dispatch(message)
                except Exception:
                    self.owner.handler_failed(message.get("channel"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind in ("message", "smessage"):
            self.owner.on_message(channel, message["data"])
        elif kind in ("subscribe", "ssubscribe"):
            self.owner.confirmed(channel)
        elif kind == "sunsubscribe" and channel in tracked_channels(self.pubsub, shard=True):
            # not asked for: the node gave the channel's slot away (resharding or failover)
            self.forget(channel)
            self.owner.trouble()

    async def close(self) -> None:
        self._closed = True
        for sender in list(self._senders):
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await close_pubsub(self.pubsub)
        if self.owns_pool:
            await self.pool.aclose()


class ShardLink(Link):
    """A pub/sub connection to one cluster primary holding shard channels (SSUBSCRIBE)."""

    shard = True

    async def _send_subscribe(self, channels: list[bytes]) -> None:
        for group in by_slot(channels):
            await self.pubsub.ssubscribe(*group)

    async def _send_unsubscribe(self, channel: bytes) -> None:
        await self.pubsub.sunsubscribe(channel)


class Subscriber:
    """Channels with confirmed subscriptions, all on one pub/sub connection from ``pool``.

    When the connection comes back events may have been missed: ``on_gap`` is called so the owner
    can fill in from history. Subclasses spread channels over several links (see ``_owner``).
    """

    def __init__(self, pool: ConnectionPool | None, on_message: MessageHandler) -> None:
        self.pool = pool  # the client's pool: the one connection comes from it, and follows a failover
        self.on_message = on_message
        self.on_gap: Callable[[], None] | None = None
        self.restarts = 0  # read loops that died of an unexpected error and were started again
        self.handler_failures = 0  # messages whose handler raised (dropped; the loop went on)
        self._failure_log = Throttled(log, HANDLER_LOG_INTERVAL)
        self._wanted: set[bytes] = set()  # every channel subscribed or subscribing
        self._where: dict[bytes, str] = {}  # channel -> name of the link that holds it
        self._links: dict[str, Link] = {}
        self._confirmations: dict[bytes, asyncio.Future[None]] = {}

    def count(self) -> int:
        return len(self._wanted)

    async def subscribe(self, channel: bytes) -> None:
        """Return once Redis confirmed the subscription; raises BrokerUnavailable or TimeoutError."""
        if channel in self._wanted and channel not in self._confirmations:
            return
        self._wanted.add(channel)
        confirmation = self._confirmations.get(channel)
        if confirmation is None:
            confirmation = self._confirmations[channel] = asyncio.get_running_loop().create_future()
            try:
                link = await self._owner(channel)
                self._where[channel] = link.name
                await link.subscribe(channel)
            except LINK_ERRORS as exc:
                self._wanted.discard(channel)
                self._where.pop(channel, None)
                self._confirmations.pop(channel, None)
                raise BrokerUnavailable(f"cannot subscribe: {exc}") from exc
        await asyncio.wait_for(asyncio.shield(confirmation), CONFIRM_TIMEOUT)

    async def unsubscribe(self, channel: bytes) -> None:
        if channel not in self._wanted:
            return
        self._wanted.discard(channel)
        pending = self._confirmations.pop(channel, None)
        if pending is not None and not pending.done():
            pending.set_result(None)  # a subscribe() still waiting returns; cancelling would cancel its caller
        link = self._links.get(self._where.pop(channel, ""))
        if link is not None:
            with contextlib.suppress(RedisError, OSError):
                await link.unsubscribe(channel)

    # -- called by the links --------------------------------------------------------------
    def confirmed(self, channel: bytes) -> None:
        confirmation = self._confirmations.pop(channel, None)
        if confirmation is not None and not confirmation.done():
            confirmation.set_result(None)

    def handler_failed(self, channel: object) -> None:
        """The handler raised on a message of ``channel``: count it, and log it now and then with the channel only."""
        self.handler_failures += 1
        name = channel.decode(errors="replace") if isinstance(channel, bytes) else str(channel)
        self._failure_log.warning(
            name, "pub/sub handler failed on a message of %s; dropped it", name[:100], exc_info=True
        )

    def reconnected(self) -> None:
        # redis-py has resubscribed the connection's channels; events published meanwhile were lost
        log.warning("pub/sub reconnected; %d channels may have missed events", len(self._wanted))
        self._gap()

    def trouble(self) -> None:
        """A connection failed or a channel moved. One connection reconnects by itself: nothing to do."""

    def _gap(self) -> None:
        if self.on_gap is not None:
            self.on_gap()

    # -- routing ----------------------------------------------------------------------------
    async def _owner(self, channel: bytes) -> Link:
        """The link of the server that serves ``channel``: here the only one."""
        link = self._links.get("")
        if link is None:
            assert self.pool is not None  # only a subclass that overrides _owner goes without
            link = self._links[""] = Link("", self.pool, self, owns_pool=False)
        return link

    async def close(self) -> None:
        for link in list(self._links.values()):
            await link.close()
        self._links.clear()


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
