"""Bots end to end: WebSocket clients on gateway processes, worker processes, one Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_token
from tests.procs import GatewayNode, WorkerProcess, scaled
from tests.worker.conftest import Webhook
from tests.wsclient import ChatSocket

pytestmark = pytest.mark.slow
FAST = {"CHAT_LEASE_SECONDS": "2", "CHAT_VISIBILITY_TIMEOUT": "3", "CHAT_LOG_FORMAT": "text"}


@pytest.fixture
def cluster(redis_url: str, redis_prefix: str) -> Iterator[Any]:
    """Start gateway nodes and workers on the test's key prefix; stop them all at the end."""
    started: list[GatewayNode | WorkerProcess] = []

    def gateway(name: str = "gw") -> GatewayNode:
        node = GatewayNode(redis_url, name, CHAT_REDIS_PREFIX=redis_prefix, **FAST)
        started.append(node)
        return node

    def worker(name: str = "worker") -> WorkerProcess:
        proc = WorkerProcess(redis_url, name, CHAT_REDIS_PREFIX=redis_prefix, **FAST)
        started.append(proc)
        return proc

    yield gateway, worker
    for proc in started:
        proc.terminate()
        print(proc.log()[-3000:])


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def create_bot(session: aiohttp.ClientSession, url: str, kind: str, config: dict[str, Any]) -> str:
    headers = {"Authorization": f"Bearer {make_token('owner', roles=['admin'])}"}
    body = {"name": "Helper", "kind": kind, "config": config}
    async with session.post(f"{url}/api/bots", json=body, headers=headers) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def start_bot(client: ChatSocket, bot: str) -> None:
    answer = await client.request({"type": "bot.start", "bot": bot}, "bot_status")
    assert answer["type"] == "bot_status", answer
    await client.expect("bot_status", bot=bot, status="running", timeout=10)


async def ask(client: ChatSocket, bot: str, text: str) -> str:
    answer = await client.request({"type": "message", "room": bot, "text": text}, "ack")
    assert answer["type"] == "ack", answer
    return str(answer["id"])


def bot_replies(client: ChatSocket, message: str) -> list[dict[str, Any]]:
    return [f for f in client.seen if f["type"] == "message" and f.get("reply_to") == message]


async def test_echo_bot_answers_through_the_gateway(cluster: Any, session: aiohttp.ClientSession) -> None:
    """A user on a gateway gets processing, thinking, typing, the reply and done from a worker process."""
    gateway, worker = cluster
    node = gateway()
    worker()
    bot = await create_bot(session, node.url, "echo", {"delay": 0.1})
    client = await ChatSocket.connect(session, node.url, make_token("owner", roles=["admin"]))
    await client.join(bot)
    await start_bot(client, bot)
    message = await ask(client, bot, "hello bot")
    await client.expect("status", message_id=message, state="done", timeout=10)
    [reply] = bot_replies(client, message)
    assert (reply["text"], reply["from"]["kind"], reply["from"]["id"]) == ("hello bot", "bot", bot)
    states = [f["state"] for f in client.seen if f["type"] == "status" and f["message_id"] == message]
    assert states == ["processing", "thinking", "done"]
    typing = [f["state"] for f in client.seen if f["type"] == "typing" and f["from"]["kind"] == "bot"]
    assert typing == [True, False]


async def test_queued_messages_are_answered_in_order_after_start(cluster: Any, session: aiohttp.ClientSession) -> None:
    """Messages sent while the bot is stopped are queued and answered in order when it starts."""
    gateway, worker = cluster
    node = gateway()
    worker()
    bot = await create_bot(session, node.url, "echo", {})
    client = await ChatSocket.connect(session, node.url, make_token("owner", roles=["admin"]))
    await client.join(bot)
    messages = [await ask(client, bot, f"q{i}") for i in range(3)]
    for message in messages:
        await client.expect("message", id=message, queued=True)
    await start_bot(client, bot)
    for message in messages:
        await client.expect("status", message_id=message, state="done", timeout=10)
    replies = [f for f in client.seen if f["type"] == "message" and f["from"]["kind"] == "bot"]
    assert [r["reply_to"] for r in replies] == messages


async def test_worker_killed_mid_request_still_answers_once(cluster: Any, session: aiohttp.ClientSession) -> None:
    """kill -9 of the worker handling a request: the other worker answers it, once, across two gateways."""
    gateway, worker = cluster
    asker_node, watcher_node = gateway("a"), gateway("b")
    workers = [worker("w1"), worker("w2")]
    bot = await create_bot(session, asker_node.url, "echo", {"delay": 1.5})
    asker = await ChatSocket.connect(session, asker_node.url, make_token("owner", roles=["admin"]))
    watcher = await ChatSocket.connect(session, watcher_node.url, make_token("owner", roles=["admin"]))
    await asker.join(bot)
    await watcher.join(bot)
    await start_bot(asker, bot)
    message = await ask(asker, bot, "do not lose me")
    await asker.expect("status", message_id=message, state="thinking", timeout=10)
    # the worker serving the bot is the one whose log says so
    [holder] = [w for w in workers if f"serving bot {bot}" in w.log()]
    killed = time.monotonic()
    holder.kill()
    await asker.expect("message", reply_to=message, timeout=30)
    print(f"kill -9 to reply through the gateway: {time.monotonic() - killed:.2f} s")
    await watcher.expect("message", reply_to=message, timeout=10)
    follow = await ask(asker, bot, "next")
    await asker.expect("status", message_id=follow, state="done", timeout=scaled(15))
    await watcher.expect("status", message_id=follow, state="done", timeout=10)
    assert len(bot_replies(asker, message)) == 1
    assert len(bot_replies(watcher, message)) == 1


async def test_webhook_bot_streams_deltas_to_clients(
    cluster: Any, session: aiohttp.ClientSession, webhook: Webhook
) -> None:
    """A webhook bot's streamed pieces reach clients as deltas before the final reply."""
    gateway, worker = cluster
    node = gateway()
    worker()
    bot = await create_bot(session, node.url, "webhook", {"url": f"{webhook.url}/stream", "timeout": 5})
    client = await ChatSocket.connect(session, node.url, make_token("owner", roles=["admin"]))
    await client.join(bot)
    await start_bot(client, bot)
    message = await ask(client, bot, "a streamed answer")
    reply = await client.expect("message", reply_to=message, timeout=10)
    deltas = [f["text"] for f in client.seen if f["type"] == "delta" and f["reply_to"] == message]
    assert "".join(deltas) == reply["text"] == "a streamed answer"
    async with session.get(
        f"{node.url}/api/bots/{bot}/messages", headers={"Authorization": f"Bearer {make_token('owner')}"}
    ) as response:
        history = (await response.json())["messages"]
    assert [m["text"] for m in history] == ["a streamed answer", "a streamed answer"]


async def test_single_process_gateway_runs_the_bots(session: aiohttp.ClientSession) -> None:
    """Without Redis, one gateway process answers bot requests with its in-process worker."""
    node = GatewayNode(None, "solo")
    try:
        bot = await create_bot(session, node.url, "echo", {})
        client = await ChatSocket.connect(session, node.url, make_token("owner", roles=["admin"]))
        await client.join(bot)
        await start_bot(client, bot)
        message = await ask(client, bot, "all in one")
        reply = await client.expect("message", reply_to=message, timeout=10)
        assert reply["text"] == "all in one"
        await client.expect("status", message_id=message, state="done")
    finally:
        assert node.terminate() == 0, node.log()
