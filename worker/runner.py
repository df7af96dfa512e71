"""A worker: serves its bots' inboxes with bounded concurrency, strictly in order per bot.

Three loops run while the worker is up: the lease loop (the roster's tick, a third of the lease
time), the read loop (one blocking read over every bot ready for a request) and the reclaim loop
(stale pending requests of bots whose previous server died, after the visibility timeout). Each
bot has at most one request taken at a time, which is what keeps its replies in order; up to
``worker_concurrency`` requests run at once, and taken requests beyond that wait for a slot.

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

from shared.broker.base import BotRegistry, BrokerUnavailable, FanOut, History
from shared.broker.queue import BotQueue, GroupMissing, Request
from shared.settings import Settings
from worker.context import RoomEvents
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
        consumer: str | None = None,
        catalog: KindCatalog | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer or settings.node_id  # this worker's name in leases and consumer groups
        self.queue = queue
        self.catalog = catalog or KindCatalog()
        self.metrics = metrics or WorkerMetrics.create()
        self.load = self.metrics.attach()
        self.stopping = asyncio.Event()
        self.roster = Roster(settings, self.consumer, registry, queue, self.catalog, self._changed)
        self.handler = RequestHandler(
            settings, self.consumer, history, queue, RoomEvents(fanout), self.metrics, self.stopping
        )
        self._ready_changed = asyncio.Event()  # a bot became ready or a slot freed
        self._bots_changed = asyncio.Event()  # bots came or went: a new one may have requests to reclaim
        self._running: dict[asyncio.Task[None], Request] = {}  # requests being handled
        self._waiting: deque[tuple[ServedBot, Request]] = deque()  # taken requests waiting for a slot
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
        left = [request for _, request in self._waiting] + list(self._running.values())
        if left:
            log.warning("drain time is over: %d requests go back to the queue for another worker", len(left))
        self._waiting.clear()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
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
                await self.queue.wait_bots_changed(interval)
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
                try:
                    requests = await self._read(ready)
                except GroupMissing:
                    await self._repair_groups(ready)
                    continue
                for request in requests:
                    await self._take(request)
                backoff = 0.1
            except Exception as exc:  # the loop must outlive any failure
                if isinstance(exc, BrokerUnavailable | OSError):
                    log.warning("reading requests failed, retrying in %.1fs: %s", backoff, exc)
                else:
                    log.exception("reading requests failed, retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _read(self, bots: list[str]) -> list[Request]:
        """One blocking read over ``bots``, cut short when the ready bots change meanwhile."""
        loop = asyncio.get_running_loop()
        read = loop.create_task(self.queue.read(self.consumer, bots, block=READ_BLOCK))
        changed = loop.create_task(self._ready_changed.wait())
        try:
            await asyncio.wait((read, changed), return_when=asyncio.FIRST_COMPLETED)
            if not read.done():
                await self.queue.wake()
            return await read
        finally:
            changed.cancel()
            if not read.done():
                read.cancel()

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
    async def _take(self, request: Request) -> None:
        served = self.roster.served.get(request.bot)
        if served is None or not served.taking or served.busy:
            # the bot left this worker while the request was on its way: give it back in its place
            await self.queue.release(self.consumer, request)
            return
        served.busy = True
        if len(self._running) < self.settings.worker_concurrency:
            self._run(served, request)
        else:
            self._waiting.append((served, request))

    def _run(self, served: ServedBot, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(served, request))
        self._running[task] = request
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        if self._waiting and not task.cancelled():
            self._run(*self._waiting.popleft())

    async def _handle(self, served: ServedBot, request: Request) -> None:
        finished = False
        try:
            finished = await self.handler.handle(served, request)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("request %s of bot %s left pending: %s", request.message_id, request.bot, exc)
        except Exception:
            log.exception("request %s of bot %s left pending", request.message_id, request.bot)
        finally:
            served.busy = False
            if not finished:
                served.recovering = True  # it is still pending: reclaim it before reading newer ones
            try:
                await self.roster.after_request(served)
            except Exception as exc:  # the next tick stops the bot instead
                log.warning("finishing the stop of bot %s failed: %s", request.bot, exc)
            self._ready_changed.set()

    def _changed(self) -> None:
        """Bots became ready, came or went: let the read and reclaim loops look again at once."""
        self._ready_changed.set()
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
