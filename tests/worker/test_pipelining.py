"""How a worker keeps requests cheap: one round trip per quick request, and the next request read ahead."""

from __future__ import annotations

import pytest

from shared.keys import Keys
from tests.worker.conftest import Rig, Webhook

redis_only = pytest.mark.parametrize("backend", ["redis"])


@redis_only
async def test_a_quick_request_costs_one_round_trip(rig: Rig) -> None:
    """Frames, reply and ack of a quick request leave in one pipeline.

    Three frames (the first one also looks up a cancel asked before the worker took it), the
    append, the ack.
    """
    await rig.worker(lease_seconds=30, visibility_timeout=60)  # no lease or reclaim work while measuring
    bot = await rig.bot("echo")
    await rig.wait_finished(bot, await rig.send(bot, "warm-up"))  # the worker's scripts are loaded now
    pipe = rig._extra_brokers[-1].pipe
    batches: list[int] = []
    pipe.observer = lambda _seconds, commands, _failed: batches.append(commands)
    count = 10
    for i in range(count):
        await rig.wait_finished(bot, await rig.send(bot, f"m{i}"))
    pipe.observer = None
    assert batches.count(5) == count
    assert len(batches) <= count + 3  # allowing for a lease tick; one round trip per frame made it 6 per request
    assert [r["text"] for r in rig.replies(bot)] == ["warm-up", *(f"m{i}" for i in range(count))]


async def test_next_request_is_read_ahead_and_waits_its_turn(rig: Rig) -> None:
    """While a request is handled the next one is already taken, and it starts only after the first is done."""
    await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.3})
    first, second = await rig.send(bot, "first"), await rig.send(bot, "second")
    await rig.until(lambda: "thinking" in rig.states(bot, first), "the first request to be handled")

    async def both_taken() -> bool:
        return await rig.broker.queue.pending(bot) == 2

    await rig.eventually(both_taken, "the second request to be read ahead")
    assert rig.states(bot, second) == []  # taken, not started
    await rig.wait_finished(bot, first, second)
    sequence = [(f["message_id"], f["state"]) for f in rig.of(bot, "status")]
    assert sequence == [(m, s) for m in (first, second) for s in ("processing", "thinking", "done")]
    assert [r["reply_to"] for r in rig.replies(bot)] == [first, second]
    seen = [
        (f["type"], f.get("state", f.get("reply_to")))
        for f in rig.frames[bot]
        if f["type"] in ("typing", "status") or (f["type"] == "message" and f["from"]["kind"] == "bot")
    ]
    each = [("status", "processing"), ("typing", True), ("status", "thinking"), ("typing", False)]
    assert seen == [*each, ("message", first), ("status", "done"), *each, ("message", second), ("status", "done")]


async def test_stopping_bot_gives_back_the_request_read_ahead(rig: Rig) -> None:
    """bot.stop finishes the request being handled; the one read ahead waits in the queue for the next start."""
    await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.5})
    first, second = await rig.send(bot, "first"), await rig.send(bot, "second")
    await rig.until(lambda: "thinking" in rig.states(bot, first), "the first request to be handled")

    async def both_taken() -> bool:
        return await rig.broker.queue.pending(bot) == 2

    await rig.eventually(both_taken, "the second request to be read ahead")
    await rig.stop(bot)
    await rig.until(lambda: "stopped" in rig.status_of(bot), "the bot to stop")
    assert rig.states(bot, first)[-1] == "done"
    assert rig.states(bot, second) == []
    assert (await rig.broker.queue.backlog(bot)).waiting == 1
    await rig.start(bot)
    await rig.wait_finished(bot, second)
    assert [r["text"] for r in rig.replies(bot)] == ["first", "second"]


@redis_only
async def test_reply_that_cannot_be_stored_keeps_the_next_request_behind_it(rig: Rig, webhook: Webhook) -> None:
    """A reply that fails to store leaves its request pending; the one read ahead is answered only after it."""
    worker = await rig.worker()
    bot = await rig.bot("webhook", {"url": f"{webhook.url}/slow", "timeout": 30})
    first, second = await rig.send(bot, "first"), await rig.send(bot, "second")

    async def both_taken() -> bool:
        return await rig.broker.queue.pending(bot) == 2

    await rig.eventually(both_taken, "the second request to be read ahead")
    history = Keys(rig.settings.redis_prefix).history(bot)
    await rig.broker.pipe.execute("DEL", history)
    await rig.broker.pipe.execute("SET", history, "not a stream")  # the reply's append now fails
    webhook.release.set()
    await rig.until(lambda: worker.roster.served[bot].recovering, "the reply to fail")
    assert await rig.broker.queue.pending(bot) == 2
    await rig.broker.pipe.execute("DEL", history)
    await rig.wait_finished(bot, first, second, timeout=20)
    assert [r["reply_to"] for r in rig.replies(bot)] == [first, second]
    assert [f["state"] for f in rig.of(bot, "status") if f["message_id"] == second] == [
        "processing",
        "executing",
        "done",
    ]
    assert (await rig.broker.queue.backlog(bot)).waiting == 0
