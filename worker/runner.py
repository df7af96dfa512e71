"""A worker: its loops that bring requests in, and its start, drain and stop.

Three loops run while the worker is up: the lease loop (the roster's tick, a third of the lease
time), the read loop (one blocking read over every bot ready for a request) and the reclaim loop
(stale pending requests of bots whose previous server died, after the visibility timeout). What
they read or reclaim goes to the :class:`~worker.dispatch.Dispatcher`, which runs each bot's
requests in order with bounded concurrency.

``stop()`` takes no new requests, lets the taken ones finish within ``drain_seconds``, gives the
rest back to the queue (still pending, in their place; the bot's next worker reclaims them at
once), and gives every lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from shared.broker.base import BotRegistry, BrokerUnavailable, FanOut, History, Replies
from shared.broker.queue import BotLeases, BotQueue, GroupMissing, WorkerRoster
from shared.settings import Settings
from worker.context import RoomEvents
from worker.dispatch import Dispatcher
from worker.handling import RequestHandler
from worker.kinds import KindCatalog
from worker.metrics import WorkerMetrics
from worker.roster import Roster, ServedBot

log = logging.getLogger(__name__)
READ_BLOCK = 1.0  # longest blocking read; a wake() ends it earlier when the ready bots change
MAX_BACKOFF = 5.0
BACKLOG_EVERY = 10.0  # seconds between queue-depth refreshes: three commands per bot served


def reclaim_interval(settings: Settings) -> float:
    """How often stale pending requests are looked for: part of the kill -9 to reply time."""
    return min(max(settings.visibility_timeout / 5, 0.2), 5.0)


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        registry: BotRegistry,
        history: History,
        fanout: FanOut,
        queue: BotQueue,
        leases: BotLeases,
        workers: WorkerRoster,
        replies: Replies,
        consumer: str | None = None,
        catalog: KindCatalog | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer or settings.node_id  # this worker's name in leases and consumer groups
        self.queue = queue
        self.workers = workers  # tells the lease loop when the bots to run changed
        self.catalog = catalog or KindCatalog()
        self.metrics = metrics or WorkerMetrics.create()
        self.load = self.metrics.attach()
        self.stopping = asyncio.Event()
        self.roster = Roster(settings, self.consumer, registry, queue, leases, workers, self.catalog, self._changed)
        self.handler = RequestHandler(
            settings, self.consumer, history, queue, RoomEvents(fanout), self.metrics, self.stopping, replies
        )
        self.dispatch = Dispatcher(
            settings,
            self.consumer,
            queue,
            self.roster,
            self.handler,
            slot_freed=self._slot_freed,
            bot_ready=self._bot_ready,
        )
        self._ready_changed = asyncio.Event()  # a bot became ready or a slot freed
        self._bots_changed = asyncio.Event()  # bots came or went: a new one may have requests to reclaim
        self._reading: frozenset[str] = frozenset()  # the bots of the read in flight
        self._waking: asyncio.Task[None] | None = None  # a wake of that read on its way
        self._loops: list[asyncio.Task[None]] = []
        self._last_tick = 0.0  # monotonic time of the last successful lease tick
        self._last_backlog = -BACKLOG_EVERY  # when the queue-depth gauges were last refreshed

    @classmethod
    def from_broker(cls, broker: Any, settings: Settings, **options: Any) -> Worker:
        """A worker on the parts of a :class:`shared.broker.Broker`."""
        return cls(
            settings,
            registry=broker.registry,
            history=broker.history,
            fanout=broker.fanout,
            queue=broker.queue,
            leases=broker.leases,
            workers=broker.workers,
            replies=broker.replies,
            **options,
        )

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start serving; returns at once (bots are claimed by the lease loop)."""
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._lease_loop(), name=f"{self.consumer}-leases"),
            loop.create_task(self._read_loop(), name=f"{self.consumer}-read"),
            loop.create_task(self._reclaim_loop(), name=f"{self.consumer}-reclaim"),
        ]
        log.info("worker %s started", self.consumer)

    async def stop(self, drain: float | None = None) -> None:
        """Drain (at most ``drain`` seconds, default ``drain_seconds``) and give the bots back."""
        drain = self.settings.drain_seconds if drain is None else drain
        if self.stopping.is_set() or not self._loops:
            return
        self.stopping.set()
        self.roster.accepting = False
        self._changed()
        lease_loop, *others = self._loops
        await asyncio.gather(*others, return_exceptions=True)
        # every request still taken, each bot's in order; released in that order, they keep their places
        left = await self.dispatch.drain(drain)
        await self.handler.events.flush()
        with contextlib.suppress(BrokerUnavailable, OSError):
            for request in left:
                await self.queue.release(self.consumer, request)
        lease_loop.cancel()
        await asyncio.gather(lease_loop, return_exceptions=True)
        with contextlib.suppress(BrokerUnavailable, OSError):
            await self.roster.release_all()
        await self.catalog.close()
        self.metrics.detach(self.load)
        log.info("worker %s stopped", self.consumer)

    def healthy(self) -> bool:
        """The loops run and the broker answered within two lease times."""
        alive = bool(self._loops) and not any(task.done() for task in self._loops)
        return alive and time.monotonic() - self._last_tick < 2 * self.settings.lease_seconds

    # -- loops ----------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        interval = self.settings.lease_seconds / 3
        backoff = 0.1
        while True:
            try:
                await self.roster.tick()
                self._last_tick = time.monotonic()
                backoff = 0.1
                await self._update_load()
            except (BrokerUnavailable, OSError) as exc:
                log.warning("lease tick failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, interval)
                continue
            except Exception:
                log.exception("lease tick failed")
            try:
                await self.workers.wait_bots_changed(interval)
            except Exception:
                log.exception("waiting for bot changes failed")
                await asyncio.sleep(interval)

    async def _read_loop(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            ready = self.roster.ready()
            self._ready_changed.clear()
            if not ready or self.dispatch.full:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready_changed.wait(), READ_BLOCK)
                continue
            try:
                self._reading = frozenset(ready)
                try:
                    requests = await self.queue.read(self.consumer, ready, block=READ_BLOCK)
                except GroupMissing:
                    await self._repair_groups(ready)
                    continue
                finally:
                    self._reading = frozenset()
                for request in requests:
                    await self.dispatch.take(request, read=True)
                backoff = 0.1
            except Exception as exc:  # the loop must outlive any failure
                if isinstance(exc, BrokerUnavailable | OSError):
                    log.warning("reading requests failed, retrying in %.1fs: %s", backoff, exc)
                else:
                    log.exception("reading requests failed, retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _wake_reader(self) -> None:
        """The bots to read changed: a waiting read loop looks again, a blocked read returns early."""
        self._ready_changed.set()
        if self._reading and (self._waking is None or self._waking.done()):
            self._waking = asyncio.get_running_loop().create_task(self._wake_read())

    async def _wake_read(self) -> None:
        with contextlib.suppress(BrokerUnavailable, OSError):
            await self.queue.wake()

    async def _repair_groups(self, bots: list[str]) -> None:
        """A bot's inbox vanished (deleted bot): drop bots no longer wanted, recreate the others' groups."""
        wanted = await self.roster.registry.running()
        for bot in bots:
            if bot in wanted:
                await self.queue.ensure_group(bot)
            elif (served := self.roster.served.get(bot)) is not None and not served.busy:
                await self.roster.finish(served)

    async def _reclaim_loop(self) -> None:
        interval = reclaim_interval(self.settings)
        last_sweep = time.monotonic()
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bots_changed.wait(), interval)
            self._bots_changed.clear()
            # recovering bots every interval; now and then every idle bot, for requests orphaned by a
            # lease that moved in the middle of a read (their order can no longer be kept)
            sweep = time.monotonic() - last_sweep >= self.settings.visibility_timeout
            if sweep:
                last_sweep = time.monotonic()
            try:
                await self._reclaim(all_idle=sweep)
            except (BrokerUnavailable, OSError) as exc:
                log.warning("reclaiming requests failed: %s", exc)
            except GroupMissing:
                pass  # the read loop repairs groups
            except Exception:
                log.exception("reclaiming requests failed")

    async def _reclaim(self, *, all_idle: bool) -> None:
        for served in self.roster.reclaimable(all_idle=all_idle):
            if self.stopping.is_set() or self.dispatch.full:
                return
            timeout = self.settings.visibility_timeout
            reclaimed = await self.queue.reclaim(self.consumer, served.id, min_idle=timeout, count=1)
            if reclaimed:
                log.info("reclaimed request %s of bot %s", reclaimed[0].message_id, served.id)
                await self.dispatch.take(reclaimed[0])
            elif served.recovering and await self.queue.pending(served.id) == 0:
                served.recovering = False  # every old request is answered: new ones may flow
                self._changed()

    # -- signals from the dispatcher ----------------------------------------------------------
    def _slot_freed(self) -> None:
        """A request is over and a slot is free."""
        if not self._reading:
            self._ready_changed.set()  # a read loop waiting for a free slot may read again

    def _bot_ready(self, served: ServedBot) -> None:
        """A request of the bot is over and it may take a new one."""
        if served.id not in self._reading:
            self._wake_reader()  # it had a request read ahead, so the read in flight leaves it out

    def _changed(self) -> None:
        """Bots became ready, came or went: let the read and reclaim loops look again at once."""
        self._wake_reader()
        self._bots_changed.set()

    async def _update_load(self) -> None:
        self.load.bots = len(self.roster.served)
        self.load.in_flight = self.dispatch.in_flight
        if time.monotonic() - self._last_backlog < BACKLOG_EVERY:
            return
        self._last_backlog = time.monotonic()
        backlogs = await asyncio.gather(*(self.queue.backlog(bot) for bot in self.roster.served))
        self.load.queue_depth = sum(b.waiting for b in backlogs)
        self.load.oldest_age = max((b.oldest_age for b in backlogs), default=0.0)
