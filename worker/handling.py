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
from shared.broker.base import BrokerUnavailable, History, Latest, Replies, ReplyCancelled
from shared.broker.queue import BotQueue, Request
from shared.settings import Settings
from worker.context import RequestContext, RoomEvents, bot_sender, status_packet
from worker.kinds import RequestFailed
from worker.metrics import WorkerMetrics
from worker.roster import ServedBot
from worker.streaming import ReplyWriter

log = logging.getLogger(__name__)
RETRY_BACKOFF = (0.5, 2.0, 5.0)  # seconds before the 2nd, 3rd, later attempts
CANCELLED = "cancelled"  # the outcome, status and message state of a reply stopped by a cancel
SUPERSEDED = "replaced by a newer message"  # the detail of a request a newer one took the place of
INTERRUPTED = "interrupted by a newer message"  # the detail of a reply a newer message stopped


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
        replies: Replies,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.history = history
        self.queue = queue
        self.events = events
        self.metrics = metrics
        self.stopping = stopping  # set on shutdown: a failed attempt is then left for another worker
        self.replies = replies
        self.typing_refresh = max(0.05, settings.typing_timeout / 2)
        self.delta_interval = settings.delta_interval_ms / 1000
        # the task answering each request here and its context, so a cancel can stop the kind
        self._answering: dict[tuple[str, str], tuple[asyncio.Task[object], RequestContext]] = {}
        # requests found cancelled or replaced when this worker took them: their kind may have begun,
        # but what it wrote is dropped, since a request that had not started gets no reply at all
        self._unstarted: set[tuple[str, str]] = set()
        replies.on_cancel(self.cancel)

    def cancel(self, room: str, message_id: str, *, announce: bool = True, because: str | None = None) -> None:
        """A cancel was asked: stop the kind if it is answering that request here."""
        answering = self._answering.get((room, message_id))
        if answering is not None and not answering[1].cancelled:
            task, ctx = answering
            ctx.cancelled = True
            ctx.announce_cancel = announce
            ctx.cancel_reason = because
            task.cancel()  # _attempt tells this cancel from a shutdown by ctx.cancelled

    async def _started(self, served: ServedBot, request: Request, detail: str | None) -> None:
        packet = status_packet(request.bot, request.message_id, "processing", detail)
        latest = None
        if served.policy != "queue" and request.sender.get("kind") == "user":
            latest = Latest(request.entry_id, str(request.sender.get("id")))
        try:
            mark = await self.replies.start(request.bot, request.message_id, packet, latest_of=latest)
        except (BrokerUnavailable, OSError) as exc:
            log.warning("could not announce a request: %s", exc)  # the reply's append checks the cancel again
            return
        if mark is not None and (request.bot, request.message_id) in self._answering:
            self._unstarted.add((request.bot, request.message_id))  # read when the kind has stopped
        if mark == "superseded":
            self.cancel(request.bot, request.message_id, because=SUPERSEDED)
        elif mark is not None:
            self.cancel(request.bot, request.message_id, announce=mark == "announce")

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
        # "processing" goes out unless a cancel was asked before this worker took the request: then
        # the answer (in the same round trip as the first frames) stops the kind, and a reply is
        # refused anyway if the kind was quicker
        self.events.in_order(self._started(served, request, detail))
        ctx = RequestContext(served.bot, served.config, request, self.events, self.typing_refresh, self.history)
        try:
            ctx.show_typing(True)
            outcome = await self._attempts(served, request, ctx)
        except asyncio.CancelledError:
            self.metrics.finished(kind, "abandoned", time.monotonic() - started)  # the drain time ran out
            raise
        finally:
            ctx.close()
            unstarted = (request.bot, request.message_id) in self._unstarted
            self._unstarted.discard((request.bot, request.message_id))
        if outcome is None:
            self.metrics.finished(kind, "abandoned", time.monotonic() - started)
            return False
        request, reply, failure = outcome
        if failure == CANCELLED:
            await self._answer(
                served,
                request,
                None if unstarted else reply,
                state=CANCELLED,
                announce=ctx.announce_cancel,
                detail=ctx.cancel_reason,
            )
            self.metrics.finished(kind, CANCELLED, time.monotonic() - started)
            return True
        if failure is not None:
            return await self._dead_letter(served, request, failure, started)
        try:
            await self._answer(served, request, reply)
        except ReplyCancelled:  # cancelled before it started, and the kind was quicker than the lookup
            mark = await self.replies.cancel_mark(request.bot, request.message_id)
            await self._answer(served, request, None, state=CANCELLED, announce=mark != "announced")
            self.metrics.finished(kind, CANCELLED, time.monotonic() - started)
            return True
        self.metrics.finished(kind, "done", time.monotonic() - started)
        return True

    async def _answer(
        self,
        served: ServedBot,
        request: Request,
        reply: str | None,
        *,
        state: str = "done",
        announce: bool = True,
        detail: str | None = None,
    ) -> None:
        """Store the reply, then acknowledge the request and announce ``state`` with the ack.

        The append and the ack start together behind the request's frames, so they usually share
        one round trip; the ack takes effect only if the reply is stored by then. Raises when the
        reply could not be stored: the request then stays pending. A cancelled reply is stored
        with what was written of it, marked ``"state": "cancelled"``.
        """
        done = status_packet(request.bot, request.message_id, state, detail) if announce else None
        if not reply:
            await self.replies.clear(request.bot, request.message_id)  # deltas may have gone out
            await self.events.in_order(self.queue.ack(request, announce=done))
            return
        marked = CANCELLED if state == CANCELLED else None
        tail = protocol.message_tail(
            request.bot, bot_sender(served.bot), reply, reply_to=request.message_id, state=marked
        )
        append = self.history.append(request.bot, tail, reply_to=request.message_id, cancelled=marked is not None)
        stored, acked = await asyncio.gather(
            self.events.in_order(append),
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

        Returns (request, reply, None) on success, (request, text so far, CANCELLED) when a cancel
        stopped it, (request, None, reason) when the request failed for good, and None when it was
        left pending for another worker.
        """
        while True:
            reply, failure, retryable = await self._attempt(served, request, ctx)
            if failure is None or failure == CANCELLED:
                return request, reply, failure
            reason = failure
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

    async def _attempt(
        self, served: ServedBot, request: Request, ctx: RequestContext
    ) -> tuple[str | None, str | None, bool]:
        """One try of the kind: (reply, None) when it answered, (text so far, CANCELLED) when a cancel
        stopped it, (None, reason) when it failed; the last item says whether to try again."""
        writer = ctx.writer = ReplyWriter(
            self.replies, self.events, request.bot, request.message_id, request.attempts, self.delta_interval
        )
        if request.attempts > 1:
            writer.restart()  # clients drop what an earlier attempt wrote
        key = (request.bot, request.message_id)
        task = asyncio.current_task()
        assert task is not None
        # the kind runs in this task (not one of its own, which would cost the quick request a
        # round trip): a cancel cancels this task, and is told from a shutdown by ctx.cancelled
        self._answering[key] = (task, ctx)
        try:
            answer = await served.kind.handle(request, ctx)
            writer.send()  # the last pieces go out before the reply
            if ctx.cancelled:  # the kind caught the cancel and returned
                task.uncancel()
                return await writer.published_text(), CANCELLED, False
            return (answer if answer is not None else ctx.final), None, False
        except asyncio.CancelledError:
            if ctx.cancelled and task.uncancel() == 0:
                return await writer.published_text(), CANCELLED, False
            writer.close()
            raise
        except Exception as exc:
            writer.close()
            if ctx.cancelled:
                task.uncancel()
                return await writer.published_text(), CANCELLED, False  # failed while being cancelled
            if not isinstance(exc, RequestFailed):
                log.exception("bot %s (%s) raised", request.bot, served.bot.kind)
            self.metrics.attempts_failed.labels(served.bot.kind).inc()
            if isinstance(exc, RequestFailed):
                return None, exc.reason, exc.retryable
            return None, f"the bot failed: {exc!r}", True
        finally:
            self._answering.pop(key, None)

    async def _dead_letter(self, served: ServedBot, request: Request, reason: str, started: float) -> bool:
        log.warning("request %s of bot %s failed: %s", request.message_id, request.bot, reason)
        if request.message_id:
            await self.replies.clear(request.bot, request.message_id)  # clients drop the reply on failed
        await self.queue.dead_letter(request, reason)
        self.metrics.dead_letters.inc()
        self.metrics.finished(served.bot.kind, "failed", time.monotonic() - started)
        if request.message_id:
            self.events.status(request.bot, request.message_id, "failed", reason)
        return True
