"""A worker: serves its bots' inboxes with bounded concurrency, strictly in order per bot.

Three loops run while the worker is up: the lease loop (the roster's tick, a third of the lease
time), the read loop (one blocking read over every bot ready for a request) and the reclaim loop
(stale pending requests of bots whose previous server died, after the visibility timeout). A bot's
requests are handled one at a time, in order: while one is handled, the next one may be read ahead
and waits behind it (``MAX_TAKEN``), so the bot stays in the blocking read and a reply does not
have to interrupt that read. Up to ``worker_concurrency`` requests run at once; taken requests
beyond that wait for a slot.

A request left pending (its handling failed on a broker error) makes the bot *recovering*: the
requests read ahead behind it are dropped here but stay pending, and the reclaim loop hands them
all out again, oldest first, before new ones are read.

``stop()`` takes no new requests, lets the taken ones finish within ``drain_seconds``, gives the
rest back to the queue (still pending, in their place; the bot's next worker reclaims them at
once), and gives every lease back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any

from shared.broker.base import BotRegistry, BrokerUnavailable, FanOut, History, Replies
from shared.broker.queue import BotLeases, BotQueue, GroupMissing, Request, WorkerRoster
from shared.settings import Settings
from worker.context import RoomEvents
from worker.handling import INTERRUPTED, RequestHandler
from worker.kinds import KindCatalog
from worker.metrics import WorkerMetrics
from worker.roster import MAX_TAKEN, Roster, ServedBot

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
        self._ready_changed = asyncio.Event()  # a bot became ready or a slot freed
        self._bots_changed = asyncio.Event()  # bots came or went: a new one may have requests to reclaim
        self._running: dict[asyncio.Task[None], ServedBot] = {}  # requests being handled, by bot
        self._waiting: deque[ServedBot] = deque()  # bots whose next taken request waits for a slot
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
        deadline = time.monotonic() + drain
        while self._running and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self._running), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        # every request still taken, each bot's in order; released in that order, they keep their places
        left = [request for served in [*self._running.values(), *self._waiting] for request in served.taken]
        if left:
            log.warning("drain time is over: %d requests go back to the queue for another worker", len(left))
        self._waiting.clear()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
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
            if not ready or len(self._running) >= self.settings.worker_concurrency:
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
                    await self._take(request, read=True)
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
            if self.stopping.is_set() or len(self._running) >= self.settings.worker_concurrency:
                return
            timeout = self.settings.visibility_timeout
            reclaimed = await self.queue.reclaim(self.consumer, served.id, min_idle=timeout, count=1)
            if reclaimed:
                log.info("reclaimed request %s of bot %s", reclaimed[0].message_id, served.id)
                await self._take(reclaimed[0])
            elif served.recovering and await self.queue.pending(served.id) == 0:
                served.recovering = False  # every old request is answered: new ones may flow
                self._changed()

    # -- requests ---------------------------------------------------------------------------------
    async def _take(self, request: Request, *, read: bool = False) -> None:
        served = self.roster.served.get(request.bot)
        if served is None or not served.taking:
            # the bot left this worker while the request was on its way: give it back in its place
            await self.queue.release(self.consumer, request)
            return
        if read and served.recovering:
            # read just as the request before it was left pending: it stays pending too, behind that
            # one, and is reclaimed after it (released, it would be reclaimed first)
            return
        if len(served.taken) >= MAX_TAKEN:
            # reads leave such a bot out, so this is a race: give the request back and recover the
            # bot, which reclaims it once the ones taken before it are over
            served.recovering = True
            await self.queue.release(self.consumer, request)
            return
        served.taken.append(request)
        if served.serving:
            if served.policy == "interrupt" and _same_user(served.taken[0], request):
                # the user sent again while the bot answers them: that reply stops where it is
                self.handler.cancel(request.bot, served.taken[0].message_id, because=INTERRUPTED)
            return  # read ahead: it runs when the one before it is over
        served.serving = True
        if len(self._running) < self.settings.worker_concurrency:
            self._run(served)
        else:
            self._waiting.append(served)

    def _run(self, served: ServedBot) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(served))
        self._running[task] = served
        task.add_done_callback(self._finished)

    async def _serve(self, served: ServedBot) -> None:
        """Handle the bot's taken requests in order; step aside after each one while other bots wait for a slot."""
        waiting = False
        try:
            while served.taken:
                await self._handle(served, served.taken[0])
                if served.taken and self._waiting:
                    self._waiting.append(served)
                    waiting = True
                    return
        finally:
            served.serving = waiting

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if task.cancelled():
            return
        if self._waiting:
            self._run(self._waiting.popleft())
        if len(self._running) < self.settings.worker_concurrency and not self._reading:
            self._ready_changed.set()  # a read loop waiting for a free slot may read again

    async def _handle(self, served: ServedBot, request: Request) -> None:
        finished = False
        try:
            finished = await self.handler.handle(served, request)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("request %s of bot %s left pending: %s", request.message_id, request.bot, exc)
        except Exception:
            log.exception("request %s of bot %s left pending", request.message_id, request.bot)
        finally:
            served.taken.popleft()
            if not finished:
                # still pending: reclaim it before reading newer ones; those read ahead stay pending
                # behind it and are reclaimed after it
                served.recovering = True
                served.taken.clear()
            try:
                await self._after(served)
            except Exception as exc:  # the next tick stops the bot instead
                log.warning("finishing the stop of bot %s failed: %s", request.bot, exc)
            if served.ready and served.id not in self._reading:
                self._wake_reader()  # it had a request read ahead, so the read in flight leaves it out

    async def _after(self, served: ServedBot) -> None:
        """A request of the bot is over: give back the ones read ahead if the bot stops or moved."""
        if served.taken and not (served.taking and self.roster.served.get(served.id) is served):
            left = list(served.taken)
            served.taken.clear()
            for request in left:
                await self.queue.release(self.consumer, request)
        if not served.taken:
            await self.roster.after_request(served)

    def _changed(self) -> None:
        """Bots became ready, came or went: let the read and reclaim loops look again at once."""
        self._wake_reader()
        self._bots_changed.set()

    async def _update_load(self) -> None:
        self.load.bots = len(self.roster.served)
        self.load.in_flight = len(self._running)
        if time.monotonic() - self._last_backlog < BACKLOG_EVERY:
            return
        self._last_backlog = time.monotonic()
        backlogs = await asyncio.gather(*(self.queue.backlog(bot) for bot in self.roster.served))
        self.load.queue_depth = sum(b.waiting for b in backlogs)
        self.load.oldest_age = max((b.oldest_age for b in backlogs), default=0.0)


def _same_user(earlier: Request, later: Request) -> bool:
    return earlier.sender.get("kind") == "user" and earlier.sender.get("id") == later.sender.get("id")
