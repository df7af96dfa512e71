"""Workers in this process, over the in-memory broker and over Redis: the whole request lifecycle."""

from __future__ import annotations

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from shared.models import BotStatus
from tests.worker.conftest import Rig, Webhook
from worker.http import create_app


def sample(worker_metrics, name: str, **labels: str) -> float:
    value = worker_metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_echo_replies_with_progress_and_typing(rig: Rig) -> None:
    """An echo bot answers with the text, after processing and thinking, typing while it works."""
    worker = await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.05})
    message = await rig.send(bot, "hello")
    await rig.wait_finished(bot, message)
    [reply] = rig.replies(bot)
    assert (reply["text"], reply["reply_to"], reply["from"]) == (
        "hello",
        message,
        {"kind": "bot", "id": bot, "name": f"Bot {bot}"},
    )
    assert rig.states(bot, message) == ["processing", "thinking", "done"]
    assert [f["state"] for f in rig.of(bot, "typing")] == [True, False]
    order = [f["type"] for f in rig.frames[bot] if f["type"] in ("message", "status")]
    assert order[-2:] == ["message", "status"]  # the reply comes before done
    assert rig.status_of(bot) == ["starting", "running"]
    await rig.until(lambda: sample(worker.metrics, "chat_worker_requests_total", kind="echo", outcome="done"), "ack")


async def test_stopped_bot_queues_and_answers_in_order_on_start(rig: Rig) -> None:
    """Messages to a stopped bot are queued, then answered in order once it starts."""
    await rig.worker()
    bot = await rig.bot("echo", start=False)
    messages = [await rig.send(bot, f"m{i}") for i in range(5)]
    await rig.until(lambda: all(rig.states(bot, m) == ["queued"] for m in messages), "queued statuses")
    assert (await rig.broker.queue.backlog(bot)).waiting == 5
    await rig.start(bot)
    await rig.wait_finished(bot, *messages)
    assert [r["reply_to"] for r in rig.replies(bot)] == messages
    assert [r["text"] for r in rig.replies(bot)] == [f"m{i}" for i in range(5)]
    assert (await rig.broker.queue.backlog(bot)).waiting == 0


async def test_stop_lets_the_request_in_flight_finish(rig: Rig) -> None:
    """bot.stop waits for the request being handled, then stops; later messages wait in the queue."""
    await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.5})
    first = await rig.send(bot, "first")
    await rig.until(lambda: "thinking" in rig.states(bot, first), "the request to be handled")
    await rig.stop(bot)
    await rig.until(lambda: "stopped" in rig.status_of(bot), "the bot to stop")
    assert rig.states(bot, first)[-1] == "done"
    statuses = [f for f in rig.frames[bot] if f["type"] in ("bot_status", "message")]
    assert [f.get("status") or f["text"] for f in statuses][-3:] == ["stopping", "first", "stopped"]
    later = await rig.send(bot, "later")
    await rig.until(lambda: rig.states(bot, later) == ["queued"], "the queued status")
    assert (await rig.broker.registry.get(bot)).status is BotStatus.STOPPED
    await rig.start(bot)
    await rig.wait_finished(bot, later)
    assert [r["text"] for r in rig.replies(bot)] == ["first", "later"]


async def test_failing_bot_is_retried_then_dead_lettered(rig: Rig, webhook: Webhook) -> None:
    """A webhook answering 500 is tried max_attempts times, then the request fails and is dead-lettered."""
    worker = await rig.worker()
    bot = await rig.bot("webhook", {"url": f"{webhook.url}/status/500", "timeout": 5})
    message = await rig.send(bot, "please")
    await rig.until(lambda: rig.finished(bot, message), "the request to fail", timeout=20)
    states = [f for f in rig.of(bot, "status") if f["message_id"] == message and f["state"] != "executing"]
    assert [s["state"] for s in states] == [
        "processing",
        "processing",
        "processing",
        "failed",
    ]
    assert states[-1]["detail"] == "the webhook answered HTTP 500"
    assert "attempt 3 of 3" in states[-2]["detail"]
    assert len(webhook.bodies) == 3
    assert rig.replies(bot) == []
    [letter] = await rig.broker.queue.dead_letters(bot)
    assert (letter.message_id, letter.attempts, letter.reason) == (message, 3, "the webhook answered HTTP 500")
    assert (await rig.broker.queue.backlog(bot)).waiting == 0
    assert sample(worker.metrics, "chat_worker_dead_letters_total") == 1
    assert sample(worker.metrics, "chat_worker_requests_total", kind="webhook", outcome="failed") == 1


async def test_webhook_deltas_are_live_and_not_in_history(rig: Rig, webhook: Webhook) -> None:
    """Streamed pieces reach the room as deltas; history keeps only the final reply."""
    await rig.worker()
    bot = await rig.bot("webhook", {"url": f"{webhook.url}/stream"})
    message = await rig.send(bot, "streamed reply here")
    await rig.wait_finished(bot, message)
    deltas = rig.of(bot, "delta")
    assert "".join(d["text"] for d in deltas) == "streamed reply here"
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(d["reply_to"] == message and "id" not in d for d in deltas)
    page = await rig.broker.history.read_latest(bot, 10)
    texts = [orjson.loads(frame)["text"] for _, frame in page.entries]
    assert texts == ["streamed reply here", "streamed reply here"]
    assert rig.states(bot, message) == ["processing", "executing", "done"]


@pytest.mark.parametrize(
    ("kind", "config", "error"),
    [("nope", {}, "unknown kind 'nope'"), ("echo", {"delay": -1}, "config.delay must be between")],
)
async def test_unusable_bot_goes_to_error(rig: Rig, kind: str, config: dict, error: str) -> None:
    """A bot whose kind is missing or whose config is invalid is set to error with the reason."""
    await rig.worker()
    bot = await rig.bot(kind, config, wait=False)
    await rig.until(lambda: "error" in rig.status_of(bot), "the error status")
    frame = rig.of(bot, "bot_status")[-1]
    assert error in frame["error"]

    async def not_wanted() -> bool:
        return bot not in await rig.broker.registry.running()

    await rig.eventually(not_wanted, "the bot to leave the running set")


async def test_malformed_request_is_dead_lettered(rig: Rig) -> None:
    """An inbox entry that is not a message frame fails at once instead of blocking the bot."""
    await rig.worker()
    bot = await rig.bot("echo")
    await rig.broker.queue.enqueue(bot, "1-1", b"junk")
    good = await rig.send(bot, "fine")
    await rig.wait_finished(bot, "1-1", good)
    assert rig.states(bot, "1-1") == ["failed"]
    assert [r["text"] for r in rig.replies(bot)] == ["fine"]
    assert len(await rig.broker.queue.dead_letters(bot)) == 1


async def test_two_workers_share_bots_and_serve_each_in_order(rig: Rig) -> None:
    """Two workers split the bots; no bot is served by both, and every bot answers in order."""
    first, second = await rig.worker("w1"), await rig.worker("w2")
    bots = [await rig.bot("echo", {"delay": 0.01}) for _ in range(8)]
    sent = {bot: [await rig.send(bot, f"{bot}-{i}") for i in range(4)] for bot in bots}
    for bot, messages in sent.items():
        await rig.wait_finished(bot, *messages)
        assert [r["reply_to"] for r in rig.replies(bot)] == messages
        sequence = [f["state"] for f in rig.of(bot, "status") if f["state"] in ("processing", "done")]
        assert sequence == ["processing", "done"] * 4  # one request at a time
    await rig.until(lambda: len(first.roster.served) + len(second.roster.served) == 8, "every bot to be served")
    await rig.until(lambda: first.roster.served and second.roster.served, "both workers to serve bots")
    assert not set(first.roster.served) & set(second.roster.served)


async def test_graceful_stop_finishes_in_flight_and_hands_bots_over(rig: Rig) -> None:
    """stop() lets the running request finish, then another worker takes the bot at once."""
    first = await rig.worker("w1")
    bot = await rig.bot("echo", {"delay": 0.5})
    message = await rig.send(bot, "in flight")
    await rig.until(lambda: "thinking" in rig.states(bot, message), "the request to be handled")
    await first.stop()
    assert rig.states(bot, message)[-1] == "done"
    assert await rig.broker.leases.owner(bot) is None
    second = await rig.worker("w2")
    after = await rig.send(bot, "after")
    await rig.wait_finished(bot, after)
    assert bot in second.roster.served
    assert [r["text"] for r in rig.replies(bot)] == ["in flight", "after"]


async def test_request_left_by_an_expired_drain_is_answered_once_later(rig: Rig) -> None:
    """A request still running when the drain time ends goes back to the queue; the next worker answers it once."""
    first = await rig.worker("w1")
    bot = await rig.bot("echo", {"delay": 2})
    message = await rig.send(bot, "slow")
    await rig.until(lambda: "thinking" in rig.states(bot, message), "the request to be handled")
    await first.stop(drain=0.05)
    assert rig.replies(bot) == []
    assert (await rig.broker.queue.backlog(bot)).pending == 1
    await rig.worker("w2", visibility_timeout=60)  # released requests do not wait for the visibility timeout
    await rig.until(lambda: rig.states(bot, message)[-1:] == ["done"], "the reclaimed reply", timeout=20)
    assert [r["text"] for r in rig.replies(bot)] == ["slow"]
    retried = [f for f in rig.of(bot, "status") if f["state"] == "processing"][-1]
    assert retried["detail"] == "attempt 2 of 3"


async def test_reclaimed_request_that_was_answered_is_not_answered_again(rig: Rig) -> None:
    """A pending request whose reply is already in history is acknowledged without a second reply."""
    bot = await rig.bot("echo", start=False)
    message = await rig.send(bot, "answered already")
    queue = rig.broker.queue
    await queue.ensure_group(bot)
    [taken] = await queue.read("ghost", [bot], block=0)
    from shared import protocol

    tail = protocol.message_tail(bot, {"kind": "bot", "id": bot}, "first answer", reply_to=message)
    await rig.broker.history.append(bot, tail, reply_to=message)
    worker = await rig.worker()
    await rig.start(bot)
    await rig.until(
        lambda: sample(worker.metrics, "chat_worker_requests_total", kind="echo", outcome="duplicate"), "the ack"
    )
    assert [r["text"] for r in rig.replies(bot)] == ["first answer"]
    assert (await queue.backlog(bot)).waiting == 0
    assert taken.message_id == message


async def test_metrics_and_health_endpoints(rig: Rig) -> None:
    """/metrics shows the worker's series and /healthz answers 200 while the worker is up."""
    worker = await rig.worker()
    bot = await rig.bot("echo")
    message = await rig.send(bot, "count me")
    await rig.wait_finished(bot, message)
    await rig.until(lambda: worker.healthy(), "a lease tick")
    async with TestClient(TestServer(create_app(worker.metrics, worker.healthy))) as client:
        response = await client.get("/metrics")
        text = await response.text()
        for name in (
            'chat_worker_requests_total{kind="echo",outcome="done"} 1.0',
            "chat_worker_request_duration_seconds_bucket",
            "chat_worker_dead_letters_total 0.0",
            "chat_worker_queue_depth",
            "chat_worker_oldest_request_age_seconds",
            "chat_worker_bots",
        ):
            assert name in text
        assert (await client.get("/healthz")).status == 200
    await worker.stop()
    assert not worker.healthy()


async def test_deleted_bot_is_dropped_quietly(rig: Rig) -> None:
    """Deleting a running bot makes its worker let go of it without recreating its inbox."""
    worker = await rig.worker()
    bot = await rig.bot("echo")
    message = await rig.send(bot, "before")
    await rig.wait_finished(bot, message)
    await rig.broker.registry.delete(bot)
    await rig.until(lambda: bot not in worker.roster.served, "the worker to drop the bot")
    other = await rig.bot("echo")
    answered = await rig.send(other, "still working")
    await rig.wait_finished(other, answered)
    assert (await rig.broker.queue.backlog(bot)).waiting == 0
    assert worker.healthy()
