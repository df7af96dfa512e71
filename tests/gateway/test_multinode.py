"""Two gateway processes on one Redis: events cross nodes, one subscription per room per node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis

from shared.keys import Keys
from tests.conftest import make_token
from tests.junk import JUNK
from tests.procs import GatewayNode, RedisServer, wait_until
from tests.wsclient import ChatSocket

pytestmark = pytest.mark.slow


@pytest.fixture
def nodes(redis_server: RedisServer) -> Iterator[tuple[GatewayNode, GatewayNode]]:
    a = GatewayNode(redis_server.url, "a", CHAT_TYPING_TIMEOUT="0.5")
    b = GatewayNode(redis_server.url, "b", CHAT_TYPING_TIMEOUT="0.5")
    yield a, b
    codes = [node.terminate() for node in (a, b)]
    assert codes == [0, 0], a.log() + b.log()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def create_bot(session: aiohttp.ClientSession, url: str, owner: str, members: list[str]) -> str:
    headers = {"Authorization": f"Bearer {make_token(owner)}"}
    async with session.post(f"{url}/api/bots", json={"name": "room", "kind": "echo"}, headers=headers) as response:
        assert response.status == 201
        bot = (await response.json())["id"]
    for member in members:
        async with session.put(f"{url}/api/bots/{bot}/members/{member}", headers=headers) as response:
            assert response.status == 204
    return bot


async def test_events_cross_nodes_with_one_subscription_per_room_per_node(
    nodes: tuple[GatewayNode, GatewayNode], session: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    """Messages, typing, presence and bot status reach members on the other node; Redis sees 2 subscribers."""
    a, b = nodes
    users = [f"u{i}" for i in range(8)]
    bot = await create_bot(session, a.url, "owner", users)
    owner = await ChatSocket.connect(session, a.url, make_token("owner"))
    await owner.join(bot)
    members = []
    for i, user in enumerate(users):
        sock = await ChatSocket.connect(session, (a, b)[i % 2].url, make_token(user))
        await sock.join(bot)
        members.append(sock)
    channel = Keys("chat").channel(bot)
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.pubsub_numsub(channel) == [(channel.encode(), 2)]
    finally:
        client.close()

    ack = await owner.request({"type": "message", "room": bot, "text": "to everyone"}, "ack")
    for sock in members:
        assert (await sock.expect("message", id=ack["id"]))["text"] == "to everyone"

    on_b = members[1]
    await owner.send({"type": "typing", "room": bot, "state": True})
    assert (await on_b.expect("typing"))["from"]["id"] == "owner"
    assert (await on_b.expect("typing", timeout=5))["state"] is False  # expired by node a after 0.5 s

    late = await ChatSocket.connect(session, a.url, make_token("u0"))  # u0's second connection: no presence
    await late.join(bot)
    newcomer_bot = await create_bot(session, b.url, "owner", ["zed"])
    assert newcomer_bot != bot
    await owner.request({"type": "bot.start", "bot": bot}, "bot_status")
    status = await on_b.expect("bot_status")
    assert status["bot"] == bot
    assert status["status"] == "starting"

    await members[3].close()  # u3 on node b leaves by disconnecting
    leave = await owner.expect("presence", user="u3", event="leave")
    assert leave["room"] == bot
    assert not [f for f in owner.seen if f["type"] == "presence" and f["user"] == "u0" and f["event"] == "join"][1:]


async def test_node_unsubscribes_after_last_local_member_leaves(
    nodes: tuple[GatewayNode, GatewayNode], session: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    """A node drops its room subscription shortly after its last local member leaves."""
    a, _ = nodes
    bot = await create_bot(session, a.url, "owner", [])
    sock = await ChatSocket.connect(session, a.url, make_token("owner"))
    await sock.join(bot)
    channel = Keys("chat").channel(bot)
    client = redis.Redis(port=redis_server.port)
    try:
        assert client.pubsub_numsub(channel)[0][1] == 1
        await sock.request({"type": "leave", "room": bot}, "left")
        await asyncio.to_thread(wait_until, lambda: client.pubsub_numsub(channel)[0][1] == 0, 10, "unsubscribe")
    finally:
        client.close()


async def test_access_log_never_prints_tokens(
    nodes: tuple[GatewayNode, GatewayNode], session: aiohttp.ClientSession
) -> None:
    """The access log records WebSocket and API requests with every token redacted."""
    a, _ = nodes
    token = make_token("secretive")
    sock = await ChatSocket.connect(session, a.url, token)
    async with session.get(f"{a.url}/api/bots", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
    async with session.get(f"{a.url}/api/bots?token={token}") as response:
        assert response.status == 200
    await sock.close()
    await asyncio.to_thread(wait_until, lambda: a.log().count('"logger":"gateway.access"') >= 3, 10, "access log lines")
    log = a.log()
    assert token not in log
    assert token.split(".")[2] not in log
    assert "/ws?token=%5Bredacted%5D" in log or "/ws?token=[redacted]" in log


async def test_junk_on_every_channel_deafens_no_node(
    nodes: tuple[GatewayNode, GatewayNode], session: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    """Junk on room, control and probe channels is dropped and counted; chat flows both ways, nodes stay ready."""
    a, b = nodes
    bot = await create_bot(session, a.url, "alice", ["bob"])
    alice = await ChatSocket.connect(session, a.url, make_token("alice"))
    bob = await ChatSocket.connect(session, b.url, make_token("bob"))
    await alice.join(bot)
    await bob.join(bot)
    keys = Keys("chat")
    channels = [keys.channel(bot), keys.channel("_control")]
    channels += [keys.channel(f"_probe.{node.node_id}") for node in (a, b)]
    client = redis.Redis(port=redis_server.port)
    try:
        for channel in channels:
            for junk in JUNK:
                client.publish(channel, junk)
    finally:
        client.close()
    for sender, receiver in ((alice, bob), (bob, alice)):
        ack = await sender.request({"type": "message", "room": bot, "text": "still here"}, "ack")
        assert (await receiver.expect("message", id=ack["id"], timeout=1))["text"] == "still here"
    assert not [f for f in bob.seen if f["type"] == "error"]  # bob was not revoked by the v99 operation
    for node in (a, b):
        async with session.get(f"{node.url}/readyz") as response:
            assert response.status == 200, await response.text()
        async with session.get(f"{node.url}/metrics") as response:
            text = await response.text()
        dropped = {
            line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("chat_pubsub_bad_packets_total{")
        }
        assert dropped['channel="room",reason="malformed"'] == len(JUNK)
        assert dropped['channel="control",reason="unknown"'] == 3  # type 7 (no op), v99, reboot
        assert dropped['channel="control",reason="malformed"'] >= 6
        assert dropped['channel="probe",reason="malformed"'] == len(JUNK)  # its own channel's junk
