"""Chat on a Redis Cluster: rooms spread over the shards, sharded pub/sub, slots that move."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest

from shared import protocol
from shared.broker.redis_history import RedisHistory
from shared.broker.redis_link import CommandPipe
from shared.broker.redis_queue import RedisBotQueue
from shared.broker.redis_topology import open_topology
from shared.keys import Keys
from shared.settings import Settings
from tests.cluster.conftest import ChatNodes, ClusterSetup, chat_nodes
from tests.conftest import make_token
from tests.junk import JUNK
from tests.procs import TEST_SECRET, scaled
from tests.wsclient import ChatSocket


@pytest.fixture
def nodes(redis_cluster: ClusterSetup, redis_prefix: str) -> Iterator[ChatNodes]:
    """Gateway nodes "a" and "b" and a worker on the cluster, on this test's key prefix."""
    with chat_nodes(redis_cluster.url, redis_prefix) as started:
        yield started


async def create_bot(session: aiohttp.ClientSession, url: str, members: tuple[str, ...] = ("bob",)) -> str:
    headers = {"Authorization": f"Bearer {make_token('owner')}"}
    async with session.post(f"{url}/api/bots", json={"name": "room", "kind": "echo"}, headers=headers) as response:
        assert response.status == 201, await response.text()
        bot = str((await response.json())["id"])
    for member in members:
        async with session.put(f"{url}/api/bots/{bot}/members/{member}", headers=headers) as response:
            assert response.status == 204
    return bot


async def rooms_on_every_shard(
    session: aiohttp.ClientSession, url: str, cluster: ClusterSetup, keys: Keys
) -> dict[int, str]:
    """Create rooms until each of the three masters owns one; master port -> room."""
    rooms: dict[int, str] = {}
    for _ in range(40):  # random ids: three shards are covered within a few tries
        bot = await create_bot(session, url)
        rooms.setdefault(cluster.owner(keys.channel(bot)), bot)
        if len(rooms) == len(cluster.servers):
            return rooms
    raise AssertionError(f"rooms landed on {sorted(rooms)} only")


@pytest.mark.slow
async def test_rooms_on_every_shard_cross_gateway_nodes(
    redis_cluster: ClusterSetup, nodes: ChatNodes, session: aiohttp.ClientSession, redis_prefix: str
) -> None:
    """Each room lives on its own master, holds one SSUBSCRIBE per gateway node there, and messages cross nodes."""
    a, b = nodes.a, nodes.b
    keys = Keys(redis_prefix)
    rooms = await rooms_on_every_shard(session, a.url, redis_cluster, keys)
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    for room in rooms.values():
        await owner.join(room)
        await bob.join(room)
    ports = [server.port for server in redis_cluster.servers]
    for port, room in rooms.items():
        channel = keys.channel(room)
        assert [redis_cluster.shard_subscribers(p, channel) for p in ports] == [2 if p == port else 0 for p in ports]
        ack = await owner.request({"type": "message", "room": room, "text": f"to shard {port}"}, "ack")
        assert (await bob.expect("message", id=ack["id"]))["text"] == f"to shard {port}"
        with redis_cluster.client(port) as master:
            assert master.exists(keys.history(room)) == 1  # the room's keys are on the master of its channel


@pytest.mark.slow
async def test_echo_bots_on_different_shards_answer(
    redis_cluster: ClusterSetup, nodes: ChatNodes, session: aiohttp.ClientSession, redis_prefix: str
) -> None:
    """One worker serves bots whose inboxes are on three masters; each reply reaches the other node."""
    a, b = nodes.a, nodes.b
    rooms = list((await rooms_on_every_shard(session, a.url, redis_cluster, Keys(redis_prefix))).values())
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    for room in rooms:
        await owner.join(room)
        await bob.join(room)
        await owner.request({"type": "bot.start", "bot": room}, "bot_status")
        await owner.expect("bot_status", bot=room, status="running", timeout=15)
    asked = [await owner.request({"type": "message", "room": room, "text": f"echo {room}"}, "ack") for room in rooms]
    for room, ack in zip(rooms, asked, strict=True):
        # ids are per room: two rooms on two shards may hand out the same one in the same millisecond
        reply = await bob.expect("message", room=room, reply_to=ack["id"], timeout=15)
        assert (reply["text"], reply["from"]["id"]) == (f"echo {room}", room)


@pytest.mark.slow
async def test_subscriptions_follow_a_slot_to_another_master(
    redis_cluster: ClusterSetup, nodes: ChatNodes, session: aiohttp.ClientSession, redis_prefix: str
) -> None:
    """After resharding moves a room's slot, both nodes subscribe on the new master and chat goes on."""
    a, b = nodes.a, nodes.b
    keys = Keys(redis_prefix)
    room = await create_bot(session, a.url)
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    await owner.join(room)
    await bob.join(room)
    before = await owner.request({"type": "message", "room": room, "text": "before the move"}, "ack")
    await bob.expect("message", id=before["id"])
    channel = keys.channel(room)
    old = redis_cluster.owner(channel)
    new = next(server.port for server in redis_cluster.servers if server.port != old)
    redis_cluster.move_slot(channel, new)

    after = await owner.request({"type": "message", "room": room, "text": "after the move"}, "ack", timeout=15)
    assert after["type"] == "ack", after
    assert (await bob.expect("message", id=after["id"], timeout=15))["text"] == "after the move"
    assert (await owner.expect("message", id=after["id"], timeout=15))["text"] == "after the move"
    # each node resubscribes when its own link hears the slot move: the two need not be done together
    deadline = time.monotonic() + 15
    while (
        counts := (redis_cluster.shard_subscribers(new, channel), redis_cluster.shard_subscribers(old, channel))
    ) != (2, 0):
        assert time.monotonic() < deadline, f"subscribers on the new and old master: {counts}"
        await asyncio.sleep(0.1)
    assert [m["id"] for m in bob.seen if m["type"] == "message"] == [before["id"], after["id"]]


@pytest.mark.slow
async def test_removal_from_a_room_reaches_the_other_node(
    redis_cluster: ClusterSetup, nodes: ChatNodes, session: aiohttp.ClientSession
) -> None:
    """The node control channel works on a cluster: removing a member on node a evicts it on node b."""
    a, b = nodes.a, nodes.b
    room = await create_bot(session, a.url)
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    await bob.join(room)
    headers = {"Authorization": f"Bearer {make_token('owner')}"}
    async with session.delete(f"{a.url}/api/bots/{room}/members/bob", headers=headers) as response:
        assert response.status == 204
    assert (await bob.expect("left", room=room, timeout=10))["reason"] == "removed"


@dataclass
class QueueOnCluster:
    queue: RedisBotQueue
    history: RedisHistory
    bots: list[str]  # one bot per master


@pytest.fixture
async def queue_on_cluster(redis_cluster: ClusterSetup, redis_prefix: str) -> AsyncIterator[QueueOnCluster]:
    """A worker's queue and a gateway's history on the cluster, with a bot whose inbox is on each master."""
    settings = Settings(redis_url=redis_cluster.url, redis_prefix=redis_prefix, jwt_secret=TEST_SECRET)
    keys = Keys(redis_prefix)
    topology = open_topology(redis_cluster.url)
    pipe = CommandPipe(topology.client)
    queue = RedisBotQueue(topology, pipe, keys, settings)
    by_master: dict[int, str] = {}
    for i in range(200):  # bounded: names spread over the three masters quickly
        by_master.setdefault(redis_cluster.owner(keys.inbox(f"b{i}")), f"b{i}")
        if len(by_master) == len(redis_cluster.servers):
            break
    bots = list(by_master.values())
    for bot in bots:
        await queue.ensure_group(bot)
    yield QueueOnCluster(queue, RedisHistory(topology, pipe, keys, settings), bots)
    await queue.close()
    await pipe.close()
    await topology.close()


@pytest.mark.slow
async def test_blocked_read_wakes_on_a_request_in_any_slot(queue_on_cluster: QueueOnCluster) -> None:
    """A read over inboxes on three masters waits, and returns as soon as a request is appended to any of them."""
    queue, history, bots = queue_on_cluster.queue, queue_on_cluster.history, queue_on_cluster.bots
    assert await queue.read("w1", bots, block=0) == []
    for bot in bots:
        read = asyncio.create_task(queue.read("w1", bots, block=scaled(10)))
        await asyncio.sleep(0)  # let the read start waiting
        started = time.monotonic()
        tail = protocol.message_tail(bot, {"kind": "user", "id": "alice"}, f"to {bot}")
        appended = await history.append(bot, tail, request=True)
        [request] = await asyncio.wait_for(read, scaled(10))
        assert (request.bot, request.message_id, request.text) == (bot, appended.id, f"to {bot}")
        assert time.monotonic() - started < scaled(2)  # the notice woke it, not the read's timeout


@pytest.mark.slow
async def test_wake_ends_a_blocked_read_on_a_cluster(queue_on_cluster: QueueOnCluster) -> None:
    """wake() makes a read that waits for notices return at once."""
    queue, bots = queue_on_cluster.queue, queue_on_cluster.bots
    assert await queue.read("w1", bots, block=0) == []
    read = asyncio.create_task(queue.read("w1", bots, block=scaled(30)))
    await asyncio.sleep(0)
    await queue.wake()
    assert await asyncio.wait_for(read, scaled(5)) == []


@pytest.mark.slow
async def test_junk_on_sharded_channels_deafens_no_node(
    redis_cluster: ClusterSetup, nodes: ChatNodes, session: aiohttp.ClientSession, redis_prefix: str
) -> None:
    """Junk SPUBLISHed on every shard's room channel and on the control channel: chat still flows both ways."""
    a, b = nodes.a, nodes.b
    keys = Keys(redis_prefix)
    rooms = await rooms_on_every_shard(session, a.url, redis_cluster, keys)
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    for room in rooms.values():
        await owner.join(room)
        await bob.join(room)
    channels = [keys.channel(room) for room in rooms.values()] + [keys.channel("_control")]
    for channel in channels:
        with redis_cluster.client(redis_cluster.owner(channel)) as master:
            for junk in JUNK:
                master.execute_command("SPUBLISH", channel, junk)
    for room in rooms.values():
        for sender, receiver in ((owner, bob), (bob, owner)):
            ack = await sender.request({"type": "message", "room": room, "text": "still here"}, "ack")
            assert (await receiver.expect("message", id=ack["id"], timeout=1))["text"] == "still here"
    for node in (a, b):
        async with session.get(f"{node.url}/readyz") as response:
            assert response.status == 200
        async with session.get(f"{node.url}/metrics") as response:
            assert 'chat_pubsub_bad_packets_total{channel="room",reason="malformed"}' in await response.text()
