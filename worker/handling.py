"""Answering one request: progress to the room, the kind's work with retries, the reply, the ack.

The room sees ``status processing``, maybe ``thinking`` / ``executing`` and deltas, the reply
message, then (once the request is acknowledged) ``status done``; or, once the attempts are used up, ``status failed`` with the
reason while the request moves to the dead-letter stream. The request is acknowledged only after
the reply is in history, and the reply append is idempotent per request, so a request retried
after a crash is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from shared import protocol
from shared.broker.base import History
from shared.broker.queue import BotQueue, Request
from shared.settings import Settings
from worker.context import RequestContext, RoomEvents, bot_sender, status_packet
from worker.kinds import RequestFailed
from worker.metrics import WorkerMetrics
from worker.roster import ServedBot

log = logging.getLogger(__name__)
RETRY_BACKOFF = (0.5, 2.0, 5.0)  # seconds before the 2nd, 3rd, later attempts


class RequestHandler:
    def __init__(
        self,
        settings: Settings,
        consumer: str,
        history: History,
        queue: BotQueue,
        events: RoomEvents,
        metrics: WorkerMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.history = history
        self.queue = queue
        self.events = events
        self.metrics = metrics
        self.stopping = stopping  # set on shutdown: a failed attempt is then left for another worker
        self.typing_refresh = max(0.05, settings.typing_timeout / 2)

    async def handle(self, served: ServedBot, request: Request) -> bool:
        """Answer the request; True when it is finished (acknowledged or dead-lettered).

        False means it stays pending for a later reclaim (shutdown during a retry). Broker
        errors propagate; the request then also stays pending.
        """
        started = time.monotonic()
        kind = served.bot.kind
        if request.problem is not None:
            return await self._dead_letter(served, request, request.problem, started)
        if request.attempts > self.settings.max_attempts:
            reason = f"gave up after {request.attempts - 1} attempts: the workers handling it stopped responding"
            return await self._dead_letter(served, request, reason, started)
        if request.attempts > 1 and await self.queue.answered(request.bot, request.message_id):
            await self.queue.ack(request)  # answered by a worker that died before acknowledging
            self.metrics.finished(kind, "duplicate", time.monotonic() - started)
            return True
        detail = f"attempt {request.attempts} of {self.settings.max_attempts}" if request.attempts > 1 else None
        self.events.status(request.bot, request.message_id, "processing", detail)
        ctx = RequestContext(served.bot, served.config, request, self.events, self.typing_refresh, self.history)
        try:
            ctx.show_typing(True)
            outcome = await self._attempts(served, request, ctx)
        except asyncio.CancelledError:
            self.metrics.finished(kind, "abandoned", time.monotonic() - started)  # the drain time ran out
            raise
        finally:
            ctx.close()
        if outcome is None:
            self.metrics.finished(kind, "abandoned", time.monotonic() - started)
            return False
        request, reply, failure = outcome
        if failure is not None:
            return await self._dead_letter(served, request, failure, started)
        await self._answer(served, request, reply)
        self.metrics.finished(kind, "done", time.monotonic() - started)
        return True

    async def _answer(self, served: ServedBot, request: Request, reply: str | None) -> None:
        """Store the reply, then acknowledge the request and announce ``done`` with the ack.

        The append and the ack start together behind the request's frames, so they usually share
        one round trip; the ack takes effect only if the reply is stored by then. Raises when the
        reply could not be stored: the request then stays pending.
        """
        done = status_packet(request.bot, request.message_id, "done")
        if not reply:
            await self.events.in_order(self.queue.ack(request, announce=done))
            return
        tail = protocol.message_tail(request.bot, bot_sender(served.bot), reply, reply_to=request.message_id)
        stored, acked = await asyncio.gather(
            self.events.in_order(self.history.append(request.bot, tail, reply_to=request.message_id)),
            self.events.in_order(self.queue.ack(request, reply_stored=True, announce=done)),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            raise stored
        if isinstance(acked, BaseException) or not acked:
            # the append took a second try (Redis had lost its scripts) and came after the ack;
            # or the ack failed: either way the reply is stored now
            await self.queue.ack(request, announce=done)

    async def _attempts(
        self, served: ServedBot, request: Request, ctx: RequestContext
    ) -> tuple[Request, str | None, str | None] | None:
        """Run the kind until it answers or the attempts are used up.

        Returns (request, reply, None) on success, (request, None, reason) when the request failed
        for good, and None when it was left pending for another worker.
        """
        while True:
            try:
                answer = await served.kind.handle(request, ctx)
                return request, answer if answer is not None else ctx.final, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = exc.reason if isinstance(exc, RequestFailed) else f"the bot failed: {exc!r}"
                retryable = exc.retryable if isinstance(exc, RequestFailed) else True
                if not isinstance(exc, RequestFailed):
                    log.exception("bot %s (%s) raised", request.bot, served.bot.kind)
                self.metrics.attempts_failed.labels(served.bot.kind).inc()
            if not retryable or request.attempts >= self.settings.max_attempts:
                return request, None, reason
            if self.stopping.is_set():
                return None
            retried = await self.queue.retry(self.consumer, request)
            if retried is None:
                return request, None, "the request was deleted"
            request, ctx.request, ctx.final = retried, retried, None
            detail = f"attempt {request.attempts} of {self.settings.max_attempts} after: {reason}"
            self.events.status(request.bot, request.message_id, "processing", detail)
            backoff = RETRY_BACKOFF[min(request.attempts - 2, len(RETRY_BACKOFF) - 1)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return None

    async def _dead_letter(self, served: ServedBot, request: Request, reason: str, started: float) -> bool:
        log.warning("request %s of bot %s failed: %s", request.message_id, request.bot, reason)
        await self.queue.dead_letter(request, reason)
        self.metrics.dead_letters.inc()
        self.metrics.finished(served.bot.kind, "failed", time.monotonic() - started)
        if request.message_id:
            self.events.status(request.bot, request.message_id, "failed", reason)
        return True
