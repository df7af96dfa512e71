"""Replies as people expect them from AI chat, on both brokers: streamed and kept for late joiners,
gathered into fewer deltas, stopped by a cancel at any point, started again by a new attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from gateway.bots import cancel_reply
from shared.broker.queue import Request
from shared.packets import StreamPosition
from tests.worker.conftest import Rig
from worker.kinds import BotKind, Context, KindCatalog, RequestFailed

WORDS = " ".join(f"w{i}" for i in range(20))


def streamed(rig: Rig, bot: str, request: str) -> str:
    return "".join(d["text"] for d in rig.of(bot, "delta") if d["reply_to"] == request)


async def test_a_streamed_reply_is_kept_while_written_then_ends_with_the_message(rig: Rig) -> None:
    await rig.worker(delta_interval_ms=0)
    bot = await rig.bot("echo", {"pace": 0.02})
    request = await rig.send(bot, WORDS)
    await rig.until(lambda: len(rig.of(bot, "delta")) >= 5, "five deltas")
    (reply,) = await rig.broker.replies.in_flight(bot)
    deltas = [d for d in rig.of(bot, "delta") if d["seq"] <= reply.position.seq]
    assert reply.position.reply_to == request
    assert reply.text == "".join(d["text"] for d in deltas)  # what a joiner gets fits the deltas it missed
    await rig.wait_finished(bot, request)
    assert [d["seq"] for d in rig.of(bot, "delta")] == list(range(1, 21))  # one per word without gathering
    assert streamed(rig, bot, request) == WORDS == rig.replies(bot)[0]["text"]
    assert "state" not in rig.replies(bot)[0]
    assert await rig.broker.replies.in_flight(bot) == []  # the final message ended it


async def test_pieces_close_together_go_out_as_one_delta(rig: Rig) -> None:
    await rig.worker(delta_interval_ms=150)
    bot = await rig.bot("echo", {"pace": 0.01})
    request = await rig.send(bot, WORDS)
    await rig.wait_finished(bot, request)
    deltas = rig.of(bot, "delta")
    assert 1 <= len(deltas) < 10  # 20 words in about 0.2 s: gathered
    assert streamed(rig, bot, request) == WORDS
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))


async def test_a_cancel_mid_stream_stores_the_text_so_far_as_cancelled(rig: Rig) -> None:
    await rig.worker(delta_interval_ms=0)
    bot = await rig.bot("echo", {"pace": 0.05})
    request = await rig.send(bot, WORDS)
    await rig.until(lambda: len(rig.of(bot, "delta")) >= 3, "three deltas")
    await cancel_reply(rig.broker, bot, request)
    await rig.wait_finished(bot, request)
    (reply,) = rig.replies(bot)
    assert reply["state"] == "cancelled"
    assert reply["reply_to"] == request
    assert reply["text"] == streamed(rig, bot, request)
    assert 0 < len(reply["text"]) < len(WORDS)
    assert rig.states(bot, request)[-1] == "cancelled"
    assert "done" not in rig.states(bot, request)
    assert await rig.broker.replies.in_flight(bot) == []
    assert (await rig.broker.replies.request(bot, request)).answered


async def test_a_cancel_before_the_bot_runs_drops_the_request(rig: Rig) -> None:
    await rig.worker()
    bot = await rig.bot("echo", start=False)
    request = await rig.send(bot, "never answered")
    await cancel_reply(rig.broker, bot, request)
    await rig.until(lambda: "cancelled" in rig.states(bot, request), "the room to hear of the cancel")
    await rig.start(bot)
    await rig.until(lambda: "running" in rig.status_of(bot), "the bot to run")
    later = await rig.send(bot, "answered")
    await rig.wait_finished(bot, later)
    assert [r["reply_to"] for r in rig.replies(bot)] == [later]
    assert rig.states(bot, request) == ["queued", "cancelled"]  # told once, by the gateway


async def test_a_cancel_of_a_waiting_request_is_told_by_the_worker_once(rig: Rig) -> None:
    await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.5})
    first, second = await rig.send(bot, "first"), await rig.send(bot, "second")
    await rig.until(lambda: "thinking" in rig.states(bot, first), "the first request to start")
    await cancel_reply(rig.broker, bot, second)
    await rig.wait_finished(bot, first, second)
    assert [r["reply_to"] for r in rig.replies(bot)] == [first]
    assert rig.states(bot, second).count("cancelled") == 1
    assert "done" not in rig.states(bot, second)


class FlakyStreamer(BotKind):
    """Streams a first try, fails it, then streams the whole reply."""

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    async def handle(self, request: Request, ctx: Context) -> str:
        if request.attempts == 1:
            await ctx.delta("a false ")
            await ctx.delta("start")
            raise RequestFailed("the model fell over")
        await ctx.delta("the ")
        await asyncio.sleep(0.05)
        await ctx.delta("answer")
        return "the answer"


async def test_a_new_attempt_starts_the_reply_again(rig: Rig) -> None:
    await rig.worker(delta_interval_ms=0, catalog=KindCatalog(extra={"flaky": FlakyStreamer}))
    bot = await rig.bot("flaky")
    request = await rig.send(bot, "go")
    await rig.wait_finished(bot, request)
    (restart,) = rig.of(bot, "stream")
    assert (restart["attempt"], restart["seq"], restart["text"]) == (2, 0, "")
    second = [d["text"] for d in rig.of(bot, "delta") if d["attempt"] == 2]
    assert "".join(second) == "the answer" == rig.replies(bot)[0]["text"]
    frames = rig.frames[bot]
    assert frames.index(restart) < frames.index(
        next(d for d in frames if d.get("attempt") == 2 and d["type"] == "delta")
    )
    assert len(rig.replies(bot)) == 1
    kept = await rig.broker.replies.in_flight(bot)
    assert kept == []
    assert StreamPosition(request, 2, 2).after(StreamPosition(request, 1, 2))


async def test_latest_answers_only_a_users_newest_waiting_message(rig: Rig) -> None:
    await rig.worker()
    bot = await rig.bot("echo", {"delay": 0.3, "send_policy": "latest"})
    first = await rig.send(bot, "first")
    await rig.until(lambda: "thinking" in rig.states(bot, first), "the first request to start")
    second, other, third = (
        await rig.send(bot, "second"),
        await rig.send(bot, "bob's", "bob"),
        await rig.send(bot, "third"),
    )
    await rig.wait_finished(bot, first, second, other, third, timeout=20)
    assert [r["reply_to"] for r in rig.replies(bot)] == [first, other, third]  # started ones and bob's stay
    (dropped,) = [f for f in rig.of(bot, "status") if f["message_id"] == second and f["state"] == "cancelled"]
    assert dropped["detail"] == "replaced by a newer message"
    assert "processing" not in rig.states(bot, second)


async def test_interrupt_stops_the_reply_in_progress_when_the_user_sends_again(rig: Rig) -> None:
    await rig.worker(delta_interval_ms=0)
    bot = await rig.bot("echo", {"pace": 0.05, "send_policy": "interrupt"})
    first = await rig.send(bot, WORDS)
    await rig.until(lambda: len(rig.of(bot, "delta")) >= 3, "the first reply to stream")
    second = await rig.send(bot, "never mind")
    await rig.wait_finished(bot, first, second, timeout=20)
    stopped, answered = rig.replies(bot)
    assert (stopped["reply_to"], stopped["state"]) == (first, "cancelled")
    assert stopped["text"] == streamed(rig, bot, first) != WORDS
    assert (answered["reply_to"], answered["text"], answered.get("state")) == (second, "never mind", None)
    (status,) = [f for f in rig.of(bot, "status") if f["message_id"] == first and f["state"] == "cancelled"]
    assert status["detail"] == "interrupted by a newer message"


def test_the_send_policy_is_checked_for_every_kind() -> None:
    from shared.kinds import validate_config

    assert validate_config("echo", {"send_policy": "latest"}) == {"send_policy": "latest"}
    assert validate_config("echo", {"send_policy": "queue", "delay": 1}) == {"delay": 1.0}
    with pytest.raises(ValueError, match=r"config\.send_policy must be one of queue, latest, interrupt"):
        validate_config("echo", {"send_policy": "newest"})
