"""Runs the requests a worker took: strictly in order per bot, up to ``worker_concurrency`` at once.

A bot's requests are handled one at a time, in order: while one is handled, the next one may be
read ahead and waits behind it (``MAX_TAKEN``), so the bot stays in the blocking read and a reply
does not have to interrupt that read. Up to ``worker_concurrency`` requests run at once; taken
requests beyond that wait for a slot.

A request left pending (its handling failed on a broker error) makes the bot *recovering*: the
requests read ahead behind it are dropped here but stay pending, and the worker's reclaim loop
hands them all out again, oldest first, before new ones are read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from shared.broker.base import BrokerUnavailable
from shared.broker.queue import BotQueue, Request
from shared.settings import Settings
from worker.handling import INTERRUPTED, RequestHandler
from worker.roster import MAX_TAKEN, Roster, ServedBot

log = logging.getLogger(__name__)


class Dispatcher:
    """Takes the requests the worker read or reclaimed and runs each bot's in turn, in a bounded set of tasks.

    ``slot_freed`` is called when a request is over and fewer than ``worker_concurrency`` run, and
    ``bot_ready`` when a bot that had a request read ahead may take a new one: the worker's read
    loop may have to look again.
    """

    def __init__(
        self,
        settings: Settings,
        consumer: str,
        queue: BotQueue,
        roster: Roster,
        handler: RequestHandler,
        *,
        slot_freed: Callable[[], None],
        bot_ready: Callable[[ServedBot], None],
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.queue = queue
        self.roster = roster
        self.handler = handler
        self._slot_freed = slot_freed
        self._bot_ready = bot_ready
        self._running: dict[asyncio.Task[None], ServedBot] = {}  # requests being handled, by bot
        self._waiting: deque[ServedBot] = deque()  # bots whose next taken request waits for a slot

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        return len(self._running)

    @property
    def full(self) -> bool:
        """Every slot is taken: a request taken now would wait for one."""
        return len(self._running) >= self.settings.worker_concurrency

    async def take(self, request: Request, *, read: bool = False) -> None:
        """Take a request the worker read (``read``) or reclaimed: run it, queue it behind the bot's, or give it back."""
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

    async def drain(self, seconds: float) -> list[Request]:
        """Let the running requests finish within ``seconds``, then cancel the rest.

        Returns every request still taken, each bot's in order: released in that order, they keep
        their places in the queue.
        """
        deadline = time.monotonic() + seconds
        while self._running and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self._running), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        left = [request for served in [*self._running.values(), *self._waiting] for request in served.taken]
        if left:
            log.warning("drain time is over: %d requests go back to the queue for another worker", len(left))
        self._waiting.clear()
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        return left

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
        if not self.full:
            self._slot_freed()

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
            if served.ready:
                self._bot_ready(served)

    async def _after(self, served: ServedBot) -> None:
        """A request of the bot is over: give back the ones read ahead if the bot stops or moved."""
        if served.taken and not (served.taking and self.roster.served.get(served.id) is served):
            left = list(served.taken)
            served.taken.clear()
            for request in left:
                await self.queue.release(self.consumer, request)
        if not served.taken:
            await self.roster.after_request(served)


def _same_user(earlier: Request, later: Request) -> bool:
    return earlier.sender.get("kind") == "user" and earlier.sender.get("id") == later.sender.get("id")
