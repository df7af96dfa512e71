"""Broker outages: gaps in pub/sub are filled from history; a Redis restart needs no gateway restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.appkeys import NODE
from shared import protocol
from shared.broker import redis_pubsub
from shared.broker.redis_compat import next_event
from tests.nodes import Cluster
from tests.procs import RedisServer, scaled


async def test_gap_in_pubsub_is_filled_from_history_in_order(redis_url: str, redis_prefix: str) -> None:
    """Events missed while the node was not subscribed are delivered from history, in order, once."""
    cluster = Cluster("redis", redis_url, redis_prefix)
    try:
        url = await cluster.node()
        bot = await cluster.bot(url)
        room = bot["id"]
        alice = await cluster.connect(url, "alice")
        await alice.join(room)
        first = await alice.request({"type": "message", "room": room, "text": "before"}, "ack")
        await alice.expect("message", id=first["id"])
        node = cluster.servers[0].app[NODE]
        history, fanout = node.broker.history, node.broker.fanout
        await fanout.unsubscribe(room)  # the node goes deaf for this room
        missed = [
            await history.append(room, protocol.message_tail(room, {"kind": "user", "id": "x"}, f"gap {i}"))
            for i in range(3)
        ]
        await fanout.subscribe(room)
        node.upkeep.on_gap()
        live = await history.append(room, protocol.message_tail(room, {"kind": "user", "id": "x"}, "after"))
        got = [await alice.expect("message") for _ in range(4)]
        assert [m["id"] for m in got] == [*(a.id for a in missed), live.id]
        await alice.request({"type": "ping"}, "pong")
        assert len([f for f in alice.seen if f["type"] == "message"]) == 5
    finally:
        await cluster.close()


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer()
    yield server
    server.terminate()


@pytest.mark.slow
async def test_redis_restart_keeps_clients_and_resumes(own_redis: RedisServer, redis_prefix: str) -> None:
    """While Redis is down readyz is 503 and sends get unavailable; after it returns chat resumes on the same connections."""
    cluster = Cluster("redis", own_redis.url, redis_prefix)
    try:
        url_a, url_b = await cluster.node(), await cluster.node()
        bot = await cluster.bot(url_a, "alice", members=("bob",))
        alice = await cluster.connect(url_a, "alice")
        bob = await cluster.connect(url_b, "bob")
        await alice.join(bot["id"])
        await bob.join(bot["id"])
        port, workdir = own_redis.port, own_redis.workdir
        own_redis.kill()
        answer = await alice.request({"type": "message", "room": bot["id"], "text": "lost?"}, "ack", timeout=15)
        assert answer["type"] == "error"
        assert answer["code"] == "unavailable"
        async with cluster.session.get(f"{url_a}/readyz") as response:
            assert response.status == 503
        restarted = RedisServer(port=port, workdir=workdir)
        try:
            deadline = asyncio.get_running_loop().time() + scaled(20)
            while True:
                async with cluster.session.get(f"{url_b}/readyz") as response:
                    if response.status == 200:
                        break
                assert asyncio.get_running_loop().time() < deadline, "node b never became ready again"
                await asyncio.sleep(0.1)
            # the bot record lived in the Redis that restarted without persistence: make a new room
            bot = await cluster.bot(url_a, "alice", members=("bob",))
            await alice.join(bot["id"])
            await bob.join(bot["id"])
            ack = await alice.request({"type": "message", "room": bot["id"], "text": "back"}, "ack", timeout=15)
            assert ack["type"] == "ack", ack
            assert (await bob.expect("message", id=ack["id"], timeout=10))["text"] == "back"
        finally:
            restarted.terminate()
    finally:
        await cluster.close()


async def test_a_dead_read_loop_makes_the_node_unready_until_its_probe_returns(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pub/sub read loop killed by an unexpected error: readyz turns 503, comes back 200, delivery goes on."""
    cluster = Cluster("redis", redis_url, redis_prefix)
    try:
        url_a, url_b = await cluster.node(), await cluster.node()
        bot = await cluster.bot(url_a, "alice", members=("bob",))
        alice = await cluster.connect(url_a, "alice")
        bob = await cluster.connect(url_b, "bob")
        await alice.join(bot["id"])
        await bob.join(bot["id"])
        before = await alice.request({"type": "message", "room": bot["id"], "text": "before"}, "ack")
        await bob.expect("message", id=before["id"])  # node b now knows the room's last id, to fill a gap from
        node = cluster.servers[1].app[NODE]
        subscriber = node.broker.fanout._subscriber
        link = next(iter(subscriber._links.values()))
        state = {"failed": False}
        statuses: list[int] = []

        async def next_event_failing_once(pubsub: object) -> object:
            if pubsub is link.pubsub and not state["failed"]:
                state["failed"] = True
                raise RuntimeError("a reader bug")
            return await next_event(pubsub)

        monkeypatch.setattr(redis_pubsub, "next_event", next_event_failing_once)
        unready_until_probe = node.probe._answered
        first = await alice.request({"type": "message", "room": bot["id"], "text": "wakes the reader"}, "ack")
        deadline = asyncio.get_running_loop().time() + scaled(10)
        while not statuses or statuses[-1] != 200 or len(statuses) < 2:
            async with cluster.session.get(f"{url_b}/readyz") as response:
                statuses.append(response.status)
            assert asyncio.get_running_loop().time() < deadline, statuses
            if statuses[-1] == 503:
                continue
            await asyncio.sleep(0.001)
        assert subscriber.restarts == 1
        assert node.probe._wanted > unready_until_probe  # the rebuild asked for a new round trip
        assert (await bob.expect("message", id=first["id"], timeout=5))["text"] == "wakes the reader"
        second = await alice.request({"type": "message", "room": bot["id"], "text": "after"}, "ack")
        assert (await bob.expect("message", id=second["id"], timeout=1))["text"] == "after"
        assert [f["id"] for f in bob.seen if f["type"] == "message"].count(first["id"]) == 1
    finally:
        await cluster.close()
