"""Real ``python -m worker`` processes on a private Redis: crashes, sharing, draining, metrics."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from shared.broker import make_broker
from tests.procs import ROOT, WorkerProcess, node_env, scaled
from tests.worker.conftest import Rig, Webhook, rig_settings
from worker.runner import reclaim_interval

LEASE, VISIBILITY = 2.0, 3.0  # short, so a crash is recovered from within seconds
ENV = {"CHAT_LEASE_SECONDS": str(LEASE), "CHAT_VISIBILITY_TIMEOUT": str(VISIBILITY), "CHAT_LOG_FORMAT": "text"}


@pytest.fixture
async def driver(redis_url: str, redis_prefix: str) -> AsyncIterator[Rig]:
    """The gateway's side, in this process; the workers are separate processes."""
    settings = rig_settings("redis", redis_url, redis_prefix, lease_seconds=LEASE, visibility_timeout=VISIBILITY)
    rig = Rig(make_broker(settings), settings)
    yield rig
    await rig.close()


@pytest.fixture
def spawn(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    """Start worker processes on the test's key prefix; each is stopped (and checked) at the end."""
    started: list[WorkerProcess] = []

    def start(name: str = "worker", **env: str) -> WorkerProcess:
        proc = WorkerProcess(redis_url, name, CHAT_REDIS_PREFIX=redis_prefix, **{**ENV, **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()
        print(proc.log()[-3000:])


async def scrape(proc: WorkerProcess, path: str = "/metrics") -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{proc.metrics_port}{path}") as response,
    ):
        return response.status, await response.text()


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def replies_to(rig: Rig, bot: str, message: str) -> list[dict[str, Any]]:
    return [r for r in rig.replies(bot) if r["reply_to"] == message]


def test_worker_without_redis_exits_2_naming_the_setting() -> None:
    """chat-worker refuses to start without a Redis URL, and on a bad setting, with status 2."""
    env = {k: v for k, v in node_env(None).items() if k != "CHAT_REDIS_URL"}
    run = subprocess.run(
        [sys.executable, "-m", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith("chat-worker: invalid setting CHAT_REDIS_URL")
    env = {**node_env("redis://127.0.0.1:9/0"), "CHAT_MAX_ATTEMPTS": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 2
    assert "CHAT_MAX_ATTEMPTS" in run.stderr.strip().splitlines()[-1]


@pytest.mark.slow
async def test_worker_process_answers_and_exports_metrics(driver: Rig, spawn: Any) -> None:
    """A worker process answers an echo bot, serves /metrics and /healthz, and exits 0 on SIGTERM."""
    proc = spawn("solo")
    bot = await driver.bot("echo")
    message = await driver.send(bot, "over redis")
    await driver.wait_finished(bot, message)
    assert [r["text"] for r in driver.replies(bot)] == ["over redis"]
    done = 'chat_worker_requests_total{kind="echo",outcome="done"} 1.0'

    async def counted() -> str | None:  # counted once the ack returned, a moment after the room heard
        status, text = await scrape(proc)
        assert status == 200
        return text if done in text else None

    text = await driver.eventually(counted, "the finished request to be counted")
    assert gauge(text, "chat_worker_bots") == 1
    assert (await scrape(proc, "/healthz"))[0] == 200
    assert proc.terminate() == 0, proc.log()
    assert await driver.broker.leases.owner(bot) is None


@pytest.mark.slow
async def test_kill_9_during_a_request_gives_exactly_one_reply(driver: Rig, spawn: Any) -> None:
    """A worker killed mid-request leaves it to the other worker, which answers it exactly once."""
    workers = {p.node_id: p for p in (spawn("a"), spawn("b"))}
    delay = 2.0
    bot = await driver.bot("echo", {"delay": delay})
    message = await driver.send(bot, "survive")
    await driver.until(lambda: "thinking" in driver.states(bot, message), "the request to be handled")
    holder = await driver.broker.leases.owner(bot)
    killed_at = time.monotonic()
    workers[holder].kill()
    bound = LEASE + VISIBILITY + reclaim_interval(driver.settings) + delay + 2
    await driver.until(lambda: replies_to(driver, bot, message), "the reclaimed reply", timeout=bound + 10)
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 to reply: {elapsed:.2f} s (lease {LEASE} s, visibility {VISIBILITY} s, delay {delay} s)")
    assert elapsed < scaled(bound)
    follow = await driver.send(bot, "after")
    await driver.wait_finished(bot, follow)
    assert [r["reply_to"] for r in driver.replies(bot)] == [message, follow]
    assert await driver.broker.leases.owner(bot) != holder


@pytest.mark.slow
async def test_failing_webhook_ends_failed_and_dead_lettered(driver: Rig, spawn: Any, webhook: Webhook) -> None:
    """A bot whose webhook answers 500 fails after max_attempts and its request is dead-lettered."""
    spawn("hooks", CHAT_MAX_ATTEMPTS="2")
    bot = await driver.bot("webhook", {"url": f"{webhook.url}/status/500", "timeout": 5})
    message = await driver.send(bot, "fail me")
    await driver.wait_finished(bot, message, timeout=20)
    assert driver.states(bot, message)[-1] == "failed"
    assert len(webhook.bodies) == 2
    [letter] = await driver.broker.queue.dead_letters(bot)
    assert (letter.message_id, letter.attempts) == (message, 2)
    assert driver.replies(bot) == []


@pytest.mark.slow
async def test_two_workers_share_many_bots_without_serving_one_twice(driver: Rig, spawn: Any) -> None:
    """Two processes split 30 bots; each bot's requests run one at a time, answered once, in order."""
    first, second = spawn("a"), spawn("b")
    bots = [await driver.bot("echo", {"delay": 0.02}) for _ in range(30)]
    sent = {bot: [await driver.send(bot, f"{bot}-{i}") for i in range(3)] for bot in bots}
    for bot, messages in sent.items():
        await driver.wait_finished(bot, *messages, timeout=30)
        assert [r["reply_to"] for r in driver.replies(bot)] == messages
        sequence = [f["state"] for f in driver.of(bot, "status") if f["state"] in ("processing", "done")]
        assert sequence == ["processing", "done"] * 3

    async def split() -> tuple[float, float] | None:
        counts = (
            gauge((await scrape(first))[1], "chat_worker_bots"),
            gauge((await scrape(second))[1], "chat_worker_bots"),
        )
        return counts if sum(counts) == 30 and all(counts) else None

    counts = await driver.eventually(split, "both workers to serve bots", timeout=20)
    assert sorted(counts) == [15, 15]


@pytest.mark.slow
async def test_sigterm_drains_without_losing_requests(driver: Rig, spawn: Any) -> None:
    """SIGTERM while requests run: they finish, the rest go to the other worker, nothing is lost."""
    first = spawn("a", CHAT_DRAIN_SECONDS="10")
    bots = [await driver.bot("echo", {"delay": 0.3}) for _ in range(4)]
    sent = {bot: [await driver.send(bot, f"{bot}-{i}") for i in range(5)] for bot in bots}
    await driver.until(lambda: all(driver.replies(bot) for bot in bots), "every bot to be answered once")
    second = spawn("b")
    assert first.terminate() == 0, first.log()
    for bot, messages in sent.items():
        await driver.wait_finished(bot, *messages, timeout=30)
        assert [r["reply_to"] for r in driver.replies(bot)] == messages
    assert second.alive()
    assert "drain time is over" not in first.log()


@pytest.mark.slow
async def test_kill_9_reply_time_with_default_timeouts(driver: Rig, spawn: Any) -> None:
    """With the default lease (10 s) and visibility timeout (30 s) a crashed request is answered within 60 s."""
    defaults = {"CHAT_LEASE_SECONDS": "10", "CHAT_VISIBILITY_TIMEOUT": "30"}
    workers = {p.node_id: p for p in (spawn("a", **defaults), spawn("b", **defaults))}
    bot = await driver.bot("echo", {"delay": 1})
    message = await driver.send(bot, "survive")
    await driver.until(lambda: "thinking" in driver.states(bot, message), "the request to be handled", timeout=20)
    killed_at = time.monotonic()
    workers[await driver.broker.leases.owner(bot)].kill()
    await driver.until(lambda: replies_to(driver, bot, message), "the reclaimed reply", timeout=70)
    elapsed = time.monotonic() - killed_at
    print(f"kill -9 to reply with defaults: {elapsed:.2f} s")
    assert elapsed < 60
    assert len(replies_to(driver, bot, message)) == 1
