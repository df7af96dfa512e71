"""Chat behind Sentinel: nodes and workers follow the master through a failover."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.cluster.conftest import MASTER_NAME, ChatNodes, SentinelSetup, chat_nodes
from tests.conftest import make_token
from tests.procs import GatewayNode, scaled, wait_until
from tests.wsclient import ChatSocket


@pytest.fixture
def nodes(redis_sentinel: SentinelSetup, redis_prefix: str) -> Iterator[ChatNodes]:
    """Gateway nodes "a" and "b" and a worker on the sentinel-managed master, on this test's key prefix."""
    with chat_nodes(redis_sentinel.url, redis_prefix) as started:
        yield started


async def chat_room(
    session: aiohttp.ClientSession, a: GatewayNode, b: GatewayNode
) -> tuple[str, ChatSocket, ChatSocket]:
    """An echo bot's room with its owner on node a and bob on node b, the bot running."""
    headers = {"Authorization": f"Bearer {make_token('owner')}"}
    async with session.post(f"{a.url}/api/bots", json={"name": "room", "kind": "echo"}, headers=headers) as response:
        assert response.status == 201, await response.text()
        room = str((await response.json())["id"])
    async with session.put(f"{a.url}/api/bots/{room}/members/bob", headers=headers) as response:
        assert response.status == 204
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    await owner.join(room)
    await bob.join(room)
    await owner.request({"type": "bot.start", "bot": room}, "bot_status")
    await owner.expect("bot_status", bot=room, status="running", timeout=15)
    return room, owner, bob


async def send_until_acked(sender: ChatSocket, room: str, text: str, timeout: float = 30) -> dict[str, Any]:
    """Send a message, again while the broker answers ``unavailable`` (the failover is under way)."""
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    for _ in range(200):  # bounded by the deadline too
        answer = await sender.request({"type": "message", "room": room, "text": text}, "ack", timeout=15)
        if answer["type"] == "ack":
            return answer
        assert answer["code"] == "unavailable", answer
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.25)  # poll interval while Redis is failing over: the server sends no event for it
    raise AssertionError(f"no ack for {text!r} before the deadline")


async def history_ids(session: aiohttp.ClientSession, node: GatewayNode, room: str) -> list[str]:
    headers = {"Authorization": f"Bearer {make_token('bob')}"}
    async with session.get(f"{node.url}/api/bots/{room}/messages", headers=headers) as response:
        assert response.status == 200, await response.text()
        return [m["id"] for m in (await response.json())["messages"]]


async def check_chat_after_failover(
    session: aiohttp.ClientSession, nodes: ChatNodes, room: str, owner: ChatSocket, bob: ChatSocket, before: str
) -> None:
    b = nodes.b
    after = await send_until_acked(owner, room, "after the failover")
    assert (await bob.expect("message", id=after["id"], timeout=15))["text"] == "after the failover"
    reply = await bob.expect("message", reply_to=after["id"], timeout=20)
    assert reply["text"] == "after the failover"
    assert {before, after["id"]} <= set(await history_ids(session, b, room))


@pytest.mark.slow
async def test_chat_follows_the_master_through_a_sentinel_failover(
    redis_sentinel: SentinelSetup, nodes: ChatNodes, session: aiohttp.ClientSession
) -> None:
    """After SENTINEL FAILOVER messages cross nodes, the bot answers and history is kept, on the promoted replica."""
    a, b = nodes.a, nodes.b
    room, owner, bob = await chat_room(session, a, b)
    before = await owner.request({"type": "message", "room": room, "text": "before the failover"}, "ack")
    await bob.expect("message", reply_to=before["id"], timeout=15)
    old = redis_sentinel.master_port()
    with redis_sentinel.sentinel_client() as sentinel:
        assert sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    await asyncio.to_thread(wait_until, lambda: redis_sentinel.master_port() != old, 30, "the replica's promotion", 0.1)
    assert redis_sentinel.master_port() == redis_sentinel.replica.port
    await check_chat_after_failover(session, nodes, room, owner, bob, before["id"])


@pytest.mark.slow
async def test_chat_survives_the_master_being_killed(
    redis_sentinel: SentinelSetup, nodes: ChatNodes, session: aiohttp.ClientSession
) -> None:
    """kill -9 of the master: once the sentinel promotes the replica, chat goes on with the same connections."""
    a, b = nodes.a, nodes.b
    room, owner, bob = await chat_room(session, a, b)
    before = await owner.request({"type": "message", "room": room, "text": "before the crash"}, "ack")
    await bob.expect("message", reply_to=before["id"], timeout=15)
    redis_sentinel.wait_replicated()  # replication is asynchronous: what the replica lacks is lost with the master
    redis_sentinel.master.kill()
    killed = redis_sentinel.master.port
    await asyncio.to_thread(wait_until, lambda: redis_sentinel.master_port() != killed, 30, "the promotion", 0.1)
    await check_chat_after_failover(session, nodes, room, owner, bob, before["id"])
