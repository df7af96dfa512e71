"""Which bots this worker serves: leases, the fair share, and the bot status moves workers make.

A worker serves a bot while it holds the bot's lease (renewed every tick, a third of the lease
time). Each tick it claims wanted-running bots nobody serves, up to its fair share (running
bots / live workers, at most ``worker_max_bots``), and hands idle bots back when it holds more, so
a worker that joins gets work. It moves a bot it starts serving from ``starting`` to ``running``,
a bot whose kind or config is unusable to ``error``, and a ``stopping`` bot to ``stopped`` once its
in-flight request is over; a ``stopping`` bot with no live server is finished by any worker.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.broker.base import BotRegistry
from shared.broker.queue import BotLeases, BotQueue, Request, WorkerRoster
from shared.kinds import POLICY_FIELD, SEND_POLICIES
from shared.models import Bot, BotStatus
from shared.settings import Settings
from worker.kinds import BotKind, KindCatalog

log = logging.getLogger(__name__)
CLAIM_BATCH = 64  # leases claimed per round trip
# Requests of one bot taken at once. Reading the next request while one is handled keeps the bot in
# the worker's blocking read: otherwise every reply would have to interrupt that read to add it back.
MAX_TAKEN = 2


@dataclass(eq=False)
class ServedBot:
    """A bot this worker holds the lease of."""

    bot: Bot  # the record as it was when the worker took the bot
    kind: BotKind
    config: dict[str, Any]  # validated by the kind
    recovering: bool  # older pending requests (of a previous server) must be reclaimed before new ones
    wanted: bool = True  # false once the bot should stop: no new requests, finish after the current one
    leaving: bool = False  # handed to another worker at the next tick (balancing): no new requests
    # requests taken, in order: the first is being handled (or waits for a slot), the rest were read ahead
    taken: deque[Request] = field(default_factory=deque)
    serving: bool = False  # a task of the worker handles the taken requests, or the bot waits for a slot

    @property
    def policy(self) -> str:
        """What a user's new message does to their earlier ones still waiting or in progress."""
        policy = self.bot.config.get(POLICY_FIELD, "queue")
        return policy if policy in SEND_POLICIES else "queue"

    @property
    def id(self) -> str:
        return self.bot.id

    @property
    def busy(self) -> bool:
        """A request of the bot is taken."""
        return bool(self.taken)

    @property
    def taking(self) -> bool:
        """New requests of the bot are wanted here."""
        return self.wanted and not self.leaving

    @property
    def ready(self) -> bool:
        """May take a new request now: while one is handled, the next one may be read ahead."""
        return self.wanted and not self.leaving and not self.recovering and len(self.taken) < MAX_TAKEN

    @property
    def idle(self) -> bool:
        return self.taking and not self.recovering and not self.taken


class Roster:
    def __init__(
        self,
        settings: Settings,
        consumer: str,
        registry: BotRegistry,
        queue: BotQueue,
        leases: BotLeases,
        workers: WorkerRoster,
        catalog: KindCatalog,
        on_change: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.registry = registry
        self.queue = queue  # the inboxes of the bots it takes
        self.leases = leases
        self.workers = workers  # the other live workers, to take a fair share
        self.catalog = catalog
        self.on_change = on_change  # called when bots become ready or go away
        self.served: dict[str, ServedBot] = {}
        self.accepting = True  # false while draining: keep leases, take no new bots
        self._last_wanted: set[str] = set()
        self._stop_watch: set[str] | None = None  # stopping bots to finish if their server is gone; None = not loaded

    # -- the periodic tick -----------------------------------------------------------------
    async def tick(self) -> None:
        """Renew, stop, claim and shed; raises BrokerUnavailable when the broker is down."""
        ttl = self.settings.lease_seconds
        live = await self.workers.heartbeat(self.consumer, ttl)
        wanted = await self.registry.running()
        await self._renew()
        await self._stop_unwanted(wanted)
        await self._finish_orphans(wanted)
        limit = min(self.settings.worker_max_bots, math.ceil(len(wanted) / max(live, 1)))
        await self._hand_back()
        if self.accepting:
            await self._claim(wanted, limit)
            self._shed(limit)
        self._last_wanted = wanted

    async def _renew(self) -> None:
        bots = list(self.served.values())
        ttl = self.settings.lease_seconds
        renewed = await asyncio.gather(*(self.leases.renew(s.id, self.consumer, ttl) for s in bots))
        for served, ok in zip(bots, renewed, strict=True):
            if not ok:
                log.warning("lost the lease of bot %s; another worker serves it now", served.id)
                self._forget(served)

    async def _stop_unwanted(self, wanted: set[str]) -> None:
        for served in list(self.served.values()):
            if served.id not in wanted:
                served.wanted = False
                if not served.busy:
                    await self.finish(served)

    async def _finish_orphans(self, wanted: set[str]) -> None:
        if self._stop_watch is None:
            bots = await self.registry.list_for("", is_admin=True)
            self._stop_watch = {bot.id for bot in bots if bot.status is BotStatus.STOPPING}
        self._stop_watch |= self._last_wanted - wanted - set(self.served)
        for bot_id in list(self._stop_watch):
            bot = await self.registry.get(bot_id)
            if bot is None or bot.status is not BotStatus.STOPPING or bot_id in self.served:
                self._stop_watch.discard(bot_id)
            elif await self.leases.claim(bot_id, self.consumer, self.settings.lease_seconds):
                # nobody serves it: nothing is in flight, so the stop is complete
                await self.registry.set_status(bot_id, BotStatus.STOPPED)
                await self.leases.release(bot_id, self.consumer)
                self._stop_watch.discard(bot_id)

    async def _claim(self, wanted: set[str], limit: int) -> None:
        candidates = [bot for bot in wanted if bot not in self.served]
        random.shuffle(candidates)  # workers starting together spread over different bots
        while candidates and len(self.served) < limit:
            size = min(CLAIM_BATCH, limit - len(self.served))
            batch, candidates = candidates[:size], candidates[size:]
            ttl = self.settings.lease_seconds
            claimed = await asyncio.gather(*(self.leases.claim(b, self.consumer, ttl) for b in batch))
            for bot_id, ok in zip(batch, claimed, strict=True):
                if ok:
                    await self._adopt(bot_id)

    async def _adopt(self, bot_id: str) -> None:
        bot = await self.registry.get(bot_id)
        if bot is None or bot.status not in (BotStatus.STARTING, BotStatus.RUNNING):
            if bot is not None and bot.status is BotStatus.STOPPING:
                await self.registry.set_status(bot_id, BotStatus.STOPPED)
            await self.leases.release(bot_id, self.consumer)
            return
        try:
            kind = self.catalog.get(bot.kind)
            config = self.catalog.config_for(bot.kind, bot.config)
        except ValueError as exc:
            log.warning("bot %s cannot start: %s", bot_id, exc)
            await self.registry.set_status(bot_id, BotStatus.ERROR, f"cannot start: {exc}")
            await self.leases.release(bot_id, self.consumer)
            return
        await self.queue.ensure_group(bot_id)
        recovering = await self.queue.pending(bot_id) > 0
        if not recovering:
            await self.queue.prune_consumers(bot_id, self.consumer)
        self.served[bot_id] = ServedBot(bot, kind, config, recovering)
        if bot.status is BotStatus.STARTING:
            # only from starting: a stop that arrived meanwhile must win
            await self.registry.set_status(bot_id, BotStatus.RUNNING, expect=(BotStatus.STARTING,))
        log.info("serving bot %s (%s)%s", bot_id, bot.kind, ", recovering pending requests" if recovering else "")
        self.on_change()

    def _shed(self, limit: int) -> None:
        """Mark idle bots above the fair share as leaving; the next tick hands them back.

        Waiting a tick lets a read already in flight over those bots come back first, so no
        request of theirs is taken after the lease is gone.
        """
        excess = len(self.served) - limit - sum(s.leaving for s in self.served.values())
        for served in [s for s in self.served.values() if s.idle][: max(excess, 0)]:
            served.leaving = True
        if excess > 0:
            self.on_change()

    async def _hand_back(self) -> None:
        leaving = [s for s in self.served.values() if s.leaving and not s.busy]
        for served in leaving:
            self._forget(served)
            await self.leases.release(served.id, self.consumer)
        if leaving:
            log.info("handed %d bots to other workers to balance the load", len(leaving))
            await self.workers.notify_bots_changed()

    # -- bots leaving ------------------------------------------------------------------------
    def _forget(self, served: ServedBot) -> None:
        if self.served.get(served.id) is served:
            del self.served[served.id]
            self.on_change()

    async def finish(self, served: ServedBot) -> None:
        """Stop serving a bot that is no longer wanted (nothing of it is in flight)."""
        self._forget(served)
        bot = await self.registry.get(served.id)
        if bot is not None and bot.status is BotStatus.STOPPING:
            await self.registry.set_status(served.id, BotStatus.STOPPED)
        await self.leases.release(served.id, self.consumer)
        log.info("stopped serving bot %s", served.id)

    async def after_request(self, served: ServedBot) -> None:
        """A request of the bot is over: finish a stop that waited for it."""
        if self.served.get(served.id) is served and not served.wanted:
            await self.finish(served)

    async def release_all(self) -> None:
        """Give every lease back (shutdown), so other workers take the bots at once."""
        bots = list(self.served.values())
        for served in bots:
            self._forget(served)
        await asyncio.gather(*(self.leases.release(s.id, self.consumer) for s in bots))
        await self.workers.leave(self.consumer)
        await self.workers.notify_bots_changed()

    def ready(self) -> list[str]:
        return [s.id for s in self.served.values() if s.ready]

    def reclaimable(self, *, all_idle: bool) -> Iterable[ServedBot]:
        """Bots to look at for stale pending requests: recovering ones, or (``all_idle``) every idle one."""
        return [s for s in self.served.values() if s.taking and not s.busy and (s.recovering or all_idle)]
