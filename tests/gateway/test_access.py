"""Revocation, removal from a room, and the node's own shutdown, across two nodes."""

from __future__ import annotations

import pytest

from tests.conftest import make_token
from tests.nodes import Cluster


async def test_revoking_a_user_disconnects_them_everywhere_and_refuses_old_tokens(cluster: Cluster) -> None:
    """An admin revocation closes the user's connections on every node with 4001 and refuses their tokens."""
    url_a, url_b = await cluster.node(), await cluster.node()
    old_token = make_token("mallory", iat=1)
    on_a = await cluster.connect(url_a, "mallory", iat=1)
    on_b = await cluster.connect(url_b, "mallory", iat=1)
    bystander = await cluster.connect(url_b, "bob")
    status, _ = await cluster.api("POST", f"{url_a}/api/admin/revoke/mallory", "bob")
    assert status == 403
    status, _ = await cluster.api("POST", f"{url_a}/api/admin/revoke/mallory", "root", roles=["admin"])
    assert status == 204
    assert await on_a.close_frame() == 4001
    assert await on_b.close_frame() == 4001
    async with cluster.session.get(f"{url_b}/ws?token={old_token}") as response:
        assert response.status == 401
        assert "revoked" in (await response.json())["message"]
    assert (await bystander.request({"type": "ping"}, "pong"))["type"] == "pong"


async def test_removed_member_leaves_the_room_on_every_node(cluster: Cluster) -> None:
    """Removing a member takes their live connections out of the room; they stop receiving it."""
    url_a, url_b = await cluster.node(), await cluster.node()
    bot = await cluster.bot(url_a, "alice", members=("bob",))
    alice = await cluster.connect(url_a, "alice")
    bob = await cluster.connect(url_b, "bob")
    await alice.join(bot["id"])
    await bob.join(bot["id"])
    status, _ = await cluster.api("DELETE", f"{url_a}/api/bots/{bot['id']}/members/bob", "alice")
    assert status == 204
    left = await bob.expect("left", room=bot["id"])
    assert left["reason"] == "removed"
    await alice.request({"type": "message", "room": bot["id"], "text": "bob is gone"}, "ack")
    answer = await bob.request({"type": "message", "room": bot["id"], "text": "still here?"}, "ack")
    assert answer["code"] == "forbidden"
    assert not [f for f in bob.seen if f["type"] == "message"]


async def test_deleted_bot_empties_its_room(cluster: Cluster) -> None:
    """Deleting a bot takes every connection out of its room; the bot is then not found."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice")
    alice = await cluster.connect(url, "alice")
    await alice.join(bot["id"])
    status, _ = await cluster.api("DELETE", f"{url}/api/bots/{bot['id']}", "alice")
    assert status == 204
    await alice.expect("left", room=bot["id"])
    answer = await alice.request({"type": "join", "room": bot["id"]}, "joined")
    assert answer["code"] == "not_found"


@pytest.mark.parametrize("drain_seconds", [0.5])
async def test_shutdown_sends_reconnect_and_closes_with_1012(cluster: Cluster, drain_seconds: float) -> None:
    """On shutdown a node sends reconnect with a delay, closes with 1012, and readyz turns 503 first."""
    from gateway.appkeys import NODE

    url = await cluster.node(drain_seconds=drain_seconds)
    socks = [await cluster.connect(url, f"user{i}") for i in range(5)]
    node = cluster.servers[0].app[NODE]
    drain = node.spawn(node.connections.drain())
    async with cluster.session.get(f"{url}/readyz") as response:
        assert response.status == 503
    for sock in socks:
        reconnect = await sock.expect("reconnect")
        assert 0 <= reconnect["delay_ms"] <= 5000
        assert await sock.close_frame() == 1012
    await drain


async def test_http_requests_per_user_are_rate_limited(cluster: Cluster) -> None:
    """API calls over the per-user rate get 429 rate_limited; another user is unaffected."""
    url = await cluster.node(http_per_second=1)
    statuses = [(await cluster.api("GET", f"{url}/api/bots", "greedy"))[0] for _ in range(5)]
    assert statuses[:2] == [200, 200]
    assert 429 in statuses
    status, body = await cluster.api("GET", f"{url}/api/bots", "greedy")
    assert (status, body["error"]) == (429, "rate_limited")
    assert (await cluster.api("GET", f"{url}/api/bots", "patient"))[0] == 200
