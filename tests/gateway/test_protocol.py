"""The WebSocket contract, on the memory and the Redis broker, with two nodes where it matters."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import jwt
import pytest

from tests.conftest import make_token
from tests.nodes import Cluster
from tests.procs import scaled


async def test_welcome_names_session_user_node_and_heartbeat(cluster: Cluster) -> None:
    """The first frame is welcome with protocol, session, user, node and heartbeat."""
    url = await cluster.node()
    sock = await cluster.connect(url, "alice")
    assert sock.welcome["protocol"] == 1
    assert sock.welcome["user"] == "alice"
    assert sock.welcome["node"] == "node0"
    assert sock.welcome["heartbeat"] > 0
    assert sock.welcome["session"]


async def test_token_in_authorization_header_is_accepted(cluster: Cluster) -> None:
    """A bearer token in the Authorization header authenticates the handshake."""
    url = await cluster.node()
    ws = await cluster.session.ws_connect(f"{url}/ws", headers={"Authorization": f"Bearer {make_token('bob')}"})
    welcome = await ws.receive_json(timeout=scaled(5))
    assert welcome["type"] == "welcome"
    assert welcome["user"] == "bob"
    await ws.close()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "missing"),
        ("not-a-jwt", "malformed"),
        (make_token("alice", ttl=-3600), "expired"),
        (make_token("alice", secret="another-secret-that-is-long-enough-000000"), "bad signature"),
        (jwt.encode({"exp": int(time.time()) + 60}, "test-secret-that-is-long-enough-0123456789"), "no sub"),
    ],
)
async def test_bad_tokens_get_401_json_and_no_upgrade(cluster: Cluster, token: str, reason: str) -> None:
    """Missing, malformed, expired, wrongly signed and sub-less tokens get HTTP 401 with a JSON body."""
    url = await cluster.node()
    with pytest.raises(aiohttp.WSServerHandshakeError) as failure:
        await cluster.session.ws_connect(f"{url}/ws?token={token}")
    assert failure.value.status == 401, reason
    async with cluster.session.get(f"{url}/ws?token={token}") as response:
        assert response.status == 401
        body = await response.json()
        assert body["error"] in ("unauthorized", "token_expired")
        assert body["message"]


async def test_alg_none_token_is_rejected(cluster: Cluster) -> None:
    """A token with alg none is refused."""
    url = await cluster.node()
    unsigned = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60}, key=None, algorithm="none")
    async with cluster.session.get(f"{url}/ws?token={unsigned}") as response:
        assert response.status == 401


async def test_foreign_origin_gets_403_and_same_origin_passes(cluster: Cluster) -> None:
    """A browser Origin other than the gateway's own is refused with 403; the gateway's own is accepted."""
    url = await cluster.node()
    token = make_token("alice")
    async with cluster.session.get(f"{url}/ws?token={token}", headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403
        assert (await response.json())["error"] == "forbidden"
    ws = await cluster.session.ws_connect(f"{url}/ws?token={token}", origin=url)
    assert (await ws.receive_json(timeout=scaled(5)))["type"] == "welcome"
    await ws.close()


async def test_listed_origin_passes(cluster: Cluster) -> None:
    """An origin listed in allowed origins may connect."""
    url = await cluster.node(allowed_origins=("https://app.example",))
    ws = await cluster.session.ws_connect(f"{url}/ws?token={make_token()}", origin="https://app.example")
    assert (await ws.receive_json(timeout=scaled(5)))["type"] == "welcome"
    await ws.close()


async def test_join_unknown_room_is_not_found_and_others_room_is_forbidden(cluster: Cluster) -> None:
    """Joining a bot that does not exist gives not_found; someone else's bot gives forbidden."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice")
    mallory = await cluster.connect(url, "mallory")
    missing = await mallory.request({"type": "join", "room": "nope"}, "joined")
    assert missing["code"] == "not_found"
    forbidden = await mallory.request({"type": "join", "room": bot["id"]}, "joined")
    assert forbidden["code"] == "forbidden"
    admin = await cluster.connect(url, "root", roles=["admin"])
    joined = await admin.join(bot["id"])
    assert joined["bot"]["id"] == bot["id"]


async def test_join_answers_bot_members_and_last_id(cluster: Cluster) -> None:
    """joined carries the bot summary, present members (joiner included), member_count and last_id."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice", members=("bob",))
    alice = await cluster.connect(url, "alice")
    joined = await alice.join(bot["id"])
    assert joined["bot"] == {"id": bot["id"], "name": "helper", "kind": "echo", "status": "stopped", "error": None}
    assert joined["members"] == ["alice"]
    assert joined["member_count"] == 1
    assert joined["last_id"] is None
    assert joined["recovered"] is False
    ack = await alice.request({"type": "message", "room": bot["id"], "text": "hi"}, "ack")
    bob = await cluster.connect(url, "bob")
    joined = await bob.join(bot["id"])
    assert joined["members"] == ["alice", "bob"]
    assert joined["last_id"] == ack["id"]


async def test_message_is_acked_and_broadcast_across_nodes(cluster: Cluster) -> None:
    """A message sent on node A is acked and reaches members on node A (sender too) and node B."""
    url_a, url_b = await cluster.node(), await cluster.node()
    bot = await cluster.bot(url_a, "alice", members=("bob",))
    alice = await cluster.connect(url_a, "alice", name="Alice")
    bob = await cluster.connect(url_b, "bob")
    await alice.join(bot["id"])
    await bob.join(bot["id"])
    ack = await alice.request({"type": "message", "room": bot["id"], "text": "hello"}, "ack")
    assert ack["type"] == "ack"
    assert isinstance(ack["ts"], int)
    for sock in (alice, bob):
        message = await sock.expect("message", id=ack["id"])
        assert message["text"] == "hello"
        assert message["room"] == bot["id"]
        assert message["ts"] == ack["ts"]
        assert message["from"] == {"kind": "user", "id": "alice", "name": "Alice"}


async def test_message_ids_follow_history_order(cluster: Cluster) -> None:
    """Messages arrive in the order of their ids, and ids are unique."""
    url = await cluster.node()
    bot = await cluster.bot(url)
    alice = await cluster.connect(url)
    await alice.join(bot["id"])
    for i in range(20):
        await alice.send({"type": "message", "room": bot["id"], "text": f"m{i}"})
    received = [await alice.expect("message") for _ in range(20)]
    assert [m["text"] for m in received] == [f"m{i}" for i in range(20)]
    ids = [tuple(map(int, m["id"].split("-"))) for m in received]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


async def test_message_to_stopped_bot_is_queued(cluster: Cluster) -> None:
    """A message to a room whose bot is not running is stored, broadcast marked queued, and acked as queued."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice", members=("bob",))
    alice = await cluster.connect(url, "alice")
    bob = await cluster.connect(url, "bob")
    await alice.join(bot["id"])
    await bob.join(bot["id"])
    ack = await alice.request({"type": "message", "room": bot["id"], "text": "later"}, "ack")
    assert ack["queued"] is True
    for sock in (alice, bob):
        assert (await sock.expect("message", id=ack["id"]))["queued"] is True
    marker = await alice.request({"type": "ping"}, "pong")
    assert marker["type"] == "pong"
    assert not [f for f in bob.seen + alice.seen if f["type"] == "status"]  # one frame per member, not two
    status, history = await cluster.api("GET", f"{url}/api/bots/{bot['id']}/messages", "alice")
    assert status == 200
    assert "queued" not in history["messages"][0]


async def test_sending_without_joining_is_bad_request_or_forbidden(cluster: Cluster) -> None:
    """Sending, typing or leaving in a room not joined gives bad_request, or forbidden if not allowed."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice")
    alice = await cluster.connect(url, "alice")
    mallory = await cluster.connect(url, "mallory")
    for frame in ({"type": "message", "text": "x"}, {"type": "typing", "state": True}, {"type": "leave"}):
        answer = await alice.request({**frame, "room": bot["id"]}, "ack")
        assert answer["code"] == "bad_request", frame
        answer = await mallory.request({**frame, "room": bot["id"]}, "ack")
        assert answer["code"] == "forbidden", frame


async def test_presence_is_per_user_not_per_connection(cluster: Cluster) -> None:
    """Presence join/leave is announced for a user's first and last connection, to others only."""
    url_a, url_b = await cluster.node(), await cluster.node()
    bot = await cluster.bot(url_a, "alice", members=("bob",))
    alice = await cluster.connect(url_a, "alice")
    await alice.join(bot["id"])
    bob1 = await cluster.connect(url_b, "bob")
    await bob1.join(bot["id"])
    assert await alice.expect("presence", user="bob") == {
        "type": "presence",
        "room": bot["id"],
        "user": "bob",
        "event": "join",
    }
    bob2 = await cluster.connect(url_a, "bob")
    joined = await bob2.join(bot["id"])
    assert joined["member_count"] == 2
    await bob1.close()  # bob still has bob2: no leave
    await bob2.request({"type": "leave", "room": bot["id"]}, "left")
    leave = await alice.expect("presence", user="bob")
    assert leave["event"] == "leave"
    # the only presence frames alice saw are one join and one leave of bob
    assert [f["event"] for f in alice.seen if f["type"] == "presence"] == ["join", "leave"]
    assert not [f for f in bob1.seen if f["type"] == "presence" and f["user"] == "bob"]


async def test_disconnect_announces_leave(cluster: Cluster) -> None:
    """Closing the last connection of a user announces presence leave."""
    url = await cluster.node()
    bot = await cluster.bot(url, "alice", members=("bob",))
    alice = await cluster.connect(url, "alice")
    await alice.join(bot["id"])
    bob = await cluster.connect(url, "bob")
    await bob.join(bot["id"])
    await alice.expect("presence", user="bob", event="join")
    await bob.close()
    await alice.expect("presence", user="bob", event="leave")


async def test_typing_goes_to_others_and_expires(cluster: Cluster) -> None:
    """typing reaches the other users only, and the server sends state false after the timeout."""
    url_a, url_b = await cluster.node(typing_timeout=0.3), await cluster.node(typing_timeout=0.3)
    bot = await cluster.bot(url_a, "alice", members=("bob",))
    alice = await cluster.connect(url_a, "alice")
    alice2 = await cluster.connect(url_b, "alice")
    bob = await cluster.connect(url_b, "bob")
    for sock in (alice, alice2, bob):
        await sock.join(bot["id"])
    await alice.send({"type": "typing", "room": bot["id"], "state": True})
    started = await bob.expect("typing")
    assert started == {"type": "typing", "room": bot["id"], "from": {"kind": "user", "id": "alice"}, "state": True}
    stopped = await bob.expect("typing", timeout=3)
    assert stopped["state"] is False
    # a marker message proves alice's other connection got no typing frame meanwhile
    ack = await bob.request({"type": "message", "room": bot["id"], "text": "marker"}, "ack")
    await alice2.expect("message", id=ack["id"])
    assert not [f for f in alice2.seen + alice.seen if f["type"] == "typing"]


async def test_ping_pong_echoes_ref(cluster: Cluster) -> None:
    """ping is answered with pong carrying the same ref."""
    url = await cluster.node()
    sock = await cluster.connect(url)
    pong = await sock.request({"type": "ping", "ref": "p-1"}, "pong")
    assert pong == {"type": "pong", "ref": "p-1"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_request"),
        ("[1, 2]", "bad_request"),
        ('{"type": "fly"}', "bad_request"),
        ('{"type": 7}', "bad_request"),
        ('{"type": "join"}', "bad_request"),
        ('{"type": "join", "room": "has space"}', "bad_request"),
        ('{"type": "join", "room": "r", "since": "yesterday"}', "bad_request"),
        ('{"type": "message", "room": "r"}', "bad_request"),
        ('{"type": "message", "room": "r", "text": ""}', "bad_request"),
        ('{"type": "typing", "room": "r", "state": "yes"}', "bad_request"),
        ('{"type": "ping", "ref": "' + "x" * 65 + '"}', "bad_request"),
        ('{"type": "ping", "ref": [1]}', "bad_request"),
        ('{"type": "auth"}', "bad_request"),
        ('{"type": "message", "room": "r", "text": "' + "x" * 4001 + '"}', "too_large"),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_open(cluster: Cluster, raw: str, code: str) -> None:
    """Malformed, unknown and incomplete frames get error with a clear code; the connection goes on."""
    url = await cluster.node()
    sock = await cluster.connect(url)
    await sock.ws.send_str(raw)
    error = await sock.expect("error")
    assert error["code"] == code
    assert error["message"]
    assert (await sock.request({"type": "ping"}, "pong"))["type"] == "pong"


async def test_error_carries_the_ref_of_a_bad_frame(cluster: Cluster) -> None:
    """An error about a frame whose ref could be read carries that ref."""
    url = await cluster.node()
    sock = await cluster.connect(url)
    error = await sock.request({"type": "join", "room": "bad room", "ref": "r9"}, "joined")
    assert error == {"type": "error", "code": "bad_request", "message": error["message"], "ref": "r9"}


async def test_binary_frame_closes_with_1003(cluster: Cluster) -> None:
    """A binary frame closes the connection with 1003."""
    url = await cluster.node()
    sock = await cluster.connect(url)
    await sock.ws.send_bytes(b"\x00\x01")
    assert await sock.close_frame() == 1003


async def test_oversized_frame_closes_with_1009(cluster: Cluster) -> None:
    """A frame over the size limit closes the connection with 1009."""
    url = await cluster.node(max_frame_bytes=1024)
    sock = await cluster.connect(url)
    await sock.ws.send_str('{"type":"ping","pad":"' + "x" * 2000 + '"}')
    assert await sock.close_frame() == 1009


async def test_token_refresh_and_expiry(cluster: Cluster) -> None:
    """auth with a new token answers auth_ok; another user's token is forbidden; expiry closes with 4001."""
    url = await cluster.node(jwt_leeway=0)
    sock = await ChatSocket_connect(cluster, url, make_token("alice", ttl=2))
    other = await sock.request({"type": "auth", "token": make_token("bob")}, "auth_ok")
    assert other["code"] == "forbidden"
    bad = await sock.request({"type": "auth", "token": "garbage"}, "auth_ok")
    assert bad["code"] == "unauthorized"
    fresh = make_token("alice", ttl=3)
    ok = await sock.request({"type": "auth", "token": fresh}, "auth_ok")
    assert ok["exp"] == jwt.decode(fresh, options={"verify_signature": False})["exp"]
    expired = await sock.expect("error", timeout=8)
    assert expired["code"] == "token_expired"
    assert await sock.close_frame() == 4001


async def ChatSocket_connect(cluster: Cluster, url: str, token: str):
    from tests.wsclient import ChatSocket

    return await ChatSocket.connect(cluster.session, url, token)


async def test_join_with_since_replays_missed_messages(cluster: Cluster) -> None:
    """join with since replays every later message in order and says recovered true."""
    url_a, url_b = await cluster.node(), await cluster.node()
    bot = await cluster.bot(url_a, "alice", members=("bob",))
    alice = await cluster.connect(url_a, "alice")
    await alice.join(bot["id"])
    first = await alice.request({"type": "message", "room": bot["id"], "text": "seen"}, "ack")
    later = [
        await alice.request({"type": "message", "room": bot["id"], "text": f"missed {i}"}, "ack") for i in range(5)
    ]
    bob = await cluster.connect(url_b, "bob")
    joined = await bob.join(bot["id"], since=first["id"])
    assert joined["recovered"] is True
    assert joined["last_id"] == later[-1]["id"]
    replayed = [await bob.expect("message") for _ in range(5)]
    assert [m["id"] for m in replayed] == [a["id"] for a in later]
    live = await alice.request({"type": "message", "room": bot["id"], "text": "live"}, "ack")
    assert (await bob.expect("message"))["id"] == live["id"]


async def test_since_older_than_history_is_not_recovered(cluster: Cluster) -> None:
    """A since that history no longer reaches gives recovered false."""
    url = await cluster.node(history_max=5)
    bot = await cluster.bot(url)
    alice = await cluster.connect(url)
    await alice.join(bot["id"])
    first = await alice.request({"type": "message", "room": bot["id"], "text": "old"}, "ack")
    for i in range(30):
        await alice.request({"type": "message", "room": bot["id"], "text": f"n{i}"}, "ack")
    other = await cluster.connect(url)
    joined = await other.join(bot["id"], since=first["id"])
    assert joined["recovered"] is False


async def test_connections_per_user_are_limited(cluster: Cluster) -> None:
    """A user over the per-node connection limit gets HTTP 429."""
    url = await cluster.node(max_connections_per_user=2)
    held = [await cluster.connect(url, "alice"), await cluster.connect(url, "alice")]
    async with cluster.session.get(f"{url}/ws?token={make_token('alice')}") as response:
        assert response.status == 429
        assert (await response.json())["error"] == "rate_limited"
    await held[0].close()


async def test_flooding_is_rate_limited_then_closed(cluster: Cluster) -> None:
    """Frames over the rate get rate_limited errors, and continued abuse closes with 4008."""
    url = await cluster.node(messages_per_second=1, messages_burst=2)
    sock = await cluster.connect(url)
    for _ in range(40):
        await sock.ws.send_str('{"type":"ping"}')
    assert await sock.close_frame() == 4008
    assert any(f.get("code") == "rate_limited" for f in sock.seen)


async def test_healthz_and_readyz(cluster: Cluster) -> None:
    """healthz and readyz answer 200 while the broker is reachable."""
    url = await cluster.node()
    for path in ("/healthz", "/readyz"):
        async with cluster.session.get(url + path) as response:
            assert response.status == 200, path


async def test_concurrent_joins_use_one_subscription(cluster: Cluster) -> None:
    """Many local members of a room share one broker subscription on the node."""
    from gateway.appkeys import NODE

    url = await cluster.node()
    fanout = cluster.servers[0].app[NODE].broker.fanout
    before = fanout.subscriptions()  # the node's control and probe channels
    bot = await cluster.bot(url)
    socks = await asyncio.gather(*(cluster.connect(url, "alice", n=i) for i in range(15)))
    await asyncio.gather(*(s.join(bot["id"]) for s in socks))
    assert fanout.subscriptions() == before + 1
