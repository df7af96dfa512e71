"""The broker contract: fan-out, history, presence and the bot registry, run over memory and Redis.

Nothing here sleeps to wait for an event: a node's handler feeds a queue, and "not delivered" is
shown by a later event on the same path arriving first (events of one publisher reach a node in
order). Only the expiry tests poll the clock, with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest

from shared import packets, protocol
from shared.broker import redis_pubsub
from shared.broker.redis import RedisFanOut
from shared.broker.redis_compat import next_event
from shared.broker.redis_link import CommandPipe
from shared.models import Bot, BotStatus
from tests.broker.conftest import TIMEOUT, Event, MakeNodes, Node, ephemeral, redis_info
from tests.procs import scaled

SENDER = {"kind": "user", "id": "alice"}
TTL = scaled(0.5)  # presence TTL of the expiry tests: refreshes every few ms must beat it
MAX_AGE = scaled(0.5)  # history age limit: a message stored just now must outlive the reads after it


def tail(room: str, text: str, reply_to: str | None = None) -> bytes:
    return protocol.message_tail(room, SENDER, text, reply_to)


def ids(entries: list[tuple[str, bytes]]) -> list[str]:
    return [entry_id for entry_id, _ in entries]


def now_ms() -> int:
    return int(time.time() * 1000)


async def wait_past(ms: int) -> None:
    """Poll the clock until it is later than ``ms`` (Unix milliseconds)."""
    deadline = time.monotonic() + TIMEOUT
    while now_ms() <= ms:
        assert time.monotonic() < deadline, "the clock did not move"
        await asyncio.sleep(0.01)


async def appended(node: Node, room: str, count: int) -> list[str]:
    """Append ``count`` messages one after another and return their ids."""
    return [(await node.history.append(room, tail(room, f"m{i}"))).id for i in range(count)]


async def assert_next(node: Node, room: str, frame: bytes | None = None) -> Event:
    event = await node.next_event()
    assert event.room == room
    if frame is not None:
        assert event.frame == frame
    return event


def make_bot(bot_id: str, owner: str = "olivia", created: int = 1) -> Bot:
    return Bot(id=bot_id, name=f"bot {bot_id}", kind="echo", owner=owner, config={"delay": 0}, created=created)


# -- fan-out ------------------------------------------------------------------------------------


async def test_publish_reaches_subscribers_on_every_node(make_nodes: MakeNodes) -> None:
    """A published event reaches every node subscribed to the room, the publisher's own included."""
    first, second = make_nodes(2)
    await first.fanout.subscribe("lobby")
    await second.fanout.subscribe("lobby")
    packet = packets.pack(b'{"type":"typing"}', exclude_user="bob")
    await first.fanout.publish("lobby", packet)
    for node in (first, second):
        event = await assert_next(node, "lobby", b'{"type":"typing"}')
        assert (event.message_id, event.excluded) == ("", "bob")


async def test_publish_skips_other_rooms_and_unsubscribed_nodes(make_nodes: MakeNodes) -> None:
    """A node gets nothing from rooms it does not hold: a later event of its own room comes first."""
    subscribed, bystander = make_nodes(2)
    await subscribed.fanout.subscribe("lobby")
    await bystander.fanout.subscribe("elsewhere")
    await subscribed.fanout.publish("lobby", ephemeral("for lobby"))
    await subscribed.fanout.publish("unheld", ephemeral("for nobody"))
    await subscribed.fanout.publish("elsewhere", ephemeral("for elsewhere"))
    await assert_next(subscribed, "lobby", protocol.encode({"type": "typing", "text": "for lobby"}))
    await assert_next(bystander, "elsewhere", protocol.encode({"type": "typing", "text": "for elsewhere"}))
    await subscribed.fanout.publish("lobby", ephemeral("again"))
    await assert_next(subscribed, "lobby", protocol.encode({"type": "typing", "text": "again"}))


async def test_subscribe_is_confirmed_before_it_returns(make_nodes: MakeNodes) -> None:
    """An event published right after subscribe() returns is delivered, every time."""
    listener, publisher = make_nodes(2)
    for i in range(25):
        room = f"fresh-{i}"
        await listener.fanout.subscribe(room)
        await publisher.fanout.publish(room, ephemeral(str(i)))
        await assert_next(listener, room, protocol.encode({"type": "typing", "text": str(i)}))


async def test_concurrent_subscribes_all_wait_for_the_confirmation(make_nodes: MakeNodes) -> None:
    """Several callers subscribing one room at once all return only once the room is live."""
    listener, publisher = make_nodes(2)
    await asyncio.gather(*(listener.fanout.subscribe("busy") for _ in range(5)))
    await publisher.fanout.publish("busy", ephemeral("live"))
    await assert_next(listener, "busy")
    assert listener.fanout.subscriptions() == 1


async def test_concurrent_subscribes_to_many_rooms_on_a_fresh_node(make_nodes: MakeNodes) -> None:
    """A node's very first subscribes, made at once for many rooms, all confirm and all deliver."""
    listener, publisher = make_nodes(2)
    rooms = [f"startup-{i}" for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(listener.fanout.subscribe(room) for room in rooms)), TIMEOUT)
    for room in rooms:
        await publisher.fanout.publish(room, ephemeral(room))
    assert {(await listener.next_event()).room for _ in rooms} == set(rooms)


async def test_unsubscribe_overtaking_a_subscribe(make_nodes: MakeNodes) -> None:
    """An unsubscribe issued while a subscribe of the room is under way lets that subscribe return."""
    listener, publisher = make_nodes(2)
    await listener.fanout.subscribe("steady")
    joining = asyncio.create_task(listener.fanout.subscribe("flap"))
    await asyncio.sleep(0)  # let the subscribe start
    await listener.fanout.unsubscribe("flap")
    assert await asyncio.wait_for(joining, TIMEOUT) is None
    assert listener.fanout.subscriptions() == 1
    await publisher.fanout.publish("flap", ephemeral("gone"))
    await publisher.fanout.publish("steady", ephemeral("here"))
    await assert_next(listener, "steady", protocol.encode({"type": "typing", "text": "here"}))


async def test_unsubscribe_stops_delivery(make_nodes: MakeNodes) -> None:
    """After unsubscribe() a node gets no more events of that room, and its other rooms still flow."""
    listener, publisher = make_nodes(2)
    await listener.fanout.subscribe("leaving")
    await listener.fanout.subscribe("staying")
    await listener.fanout.unsubscribe("leaving")
    await publisher.fanout.publish("leaving", ephemeral("gone"))
    await publisher.fanout.publish("staying", ephemeral("here"))
    await assert_next(listener, "staying", protocol.encode({"type": "typing", "text": "here"}))


async def test_resubscribe_after_the_last_room_left(make_nodes: MakeNodes) -> None:
    """A node that left its only room can subscribe again and receive events."""
    listener, publisher = make_nodes(2)
    for round_ in range(3):
        await listener.fanout.subscribe("flapping")
        await publisher.fanout.publish("flapping", ephemeral(str(round_)))
        await assert_next(listener, "flapping", protocol.encode({"type": "typing", "text": str(round_)}))
        await listener.fanout.unsubscribe("flapping")
        assert listener.fanout.subscriptions() == 0
    # the loop must stay responsive once nothing is subscribed
    await asyncio.wait_for(publisher.history.last_id("flapping"), TIMEOUT)


async def test_a_handler_that_raises_loses_only_that_event(make_nodes: MakeNodes) -> None:
    """An event whose handler raises is dropped; later events of that room and of others still arrive."""
    listener, publisher = make_nodes(2)
    await listener.fanout.subscribe("lobby")
    await listener.fanout.subscribe("hall")
    for junk in (b"not a packet", b"", b"1-1x\x1f\n{}"):  # the test handler raises BadPacket on each
        await publisher.fanout.publish("lobby", junk)
    await publisher.fanout.publish("hall", ephemeral("after junk"))
    await publisher.fanout.publish("lobby", ephemeral("lobby after junk"))
    await assert_next(listener, "hall", protocol.encode({"type": "typing", "text": "after junk"}))
    await assert_next(listener, "lobby", protocol.encode({"type": "typing", "text": "lobby after junk"}))


async def test_subscriptions_counts_rooms(make_nodes: MakeNodes) -> None:
    """subscriptions() counts distinct subscribed rooms."""
    (node,) = make_nodes(1)
    assert node.fanout.subscriptions() == 0
    await node.fanout.subscribe("a")
    await node.fanout.subscribe("b")
    await node.fanout.subscribe("a")
    assert node.fanout.subscriptions() == 2
    await node.fanout.unsubscribe("a")
    await node.fanout.unsubscribe("never-subscribed")
    assert node.fanout.subscriptions() == 1


# -- history: append ----------------------------------------------------------------------------


async def test_append_returns_increasing_ids_and_publishes_the_frame(make_nodes: MakeNodes) -> None:
    """Appends get increasing ids; subscribers get a packet carrying the id and the composed frame."""
    writer, reader = make_nodes(2)
    await reader.fanout.subscribe("chat")
    previous = "0-0"
    for i in range(5):
        body = tail("chat", f"hello {i}")
        result = await writer.history.append("chat", body)
        assert protocol.id_newer(result.id, previous)
        assert result.ts == protocol.message_ts(result.id)
        assert not result.duplicate
        event = await assert_next(reader, "chat", protocol.compose_message(result.id, body))
        assert (event.message_id, event.excluded) == (result.id, "")
        assert orjson.loads(event.frame) == {
            "type": "message",
            "id": result.id,
            "ts": result.ts,
            "room": "chat",
            "from": SENDER,
            "text": f"hello {i}",
        }
        previous = result.id


async def test_append_keeps_order_under_concurrency(make_nodes: MakeNodes) -> None:
    """Concurrent appends from one node get ids in call order, and history holds them all."""
    (node,) = make_nodes(1)
    results = await asyncio.gather(*(node.history.append("rush", tail("rush", str(i))) for i in range(200)))
    got = [r.id for r in results]
    assert all(protocol.id_newer(b, a) for a, b in itertools.pairwise(got))
    page = await node.history.read_latest("rush", 500)
    assert ids(page.entries) == got


async def test_request_to_a_stopped_bot_is_queued(make_nodes: MakeNodes) -> None:
    """A request to a bot that is not running is published once, marked queued; history keeps it unmarked."""
    (node,) = make_nodes(1)
    await node.registry.create(make_bot("sleepy"))
    for room in ("sleepy", "no-such-bot"):
        await node.fanout.subscribe(room)
        result = await node.history.append(room, tail(room, "anyone?"), request=True)
        assert result.queued
        live = await assert_next(node, room, protocol.compose_message(result.id, tail(room, "anyone?"), queued=True))
        assert orjson.loads(live.frame)["queued"] is True
        assert live.message_id == result.id
        page = await node.history.read_latest(room, 1)
        assert page.entries == [(result.id, protocol.compose_message(result.id, tail(room, "anyone?")))]
        await node.fanout.publish(room, ephemeral("marker"))
        await assert_next(node, room, protocol.encode({"type": "typing", "text": "marker"}))


async def test_request_to_a_running_bot_is_not_announced_as_queued(make_nodes: MakeNodes) -> None:
    """A request to a running bot publishes only the message."""
    (node,) = make_nodes(1)
    await node.registry.create(make_bot("awake"))
    await node.fanout.subscribe("awake")
    await node.registry.set_status("awake", BotStatus.RUNNING)
    await assert_next(node, "awake")  # the bot_status frame
    result = await node.history.append("awake", tail("awake", "hi"), request=True)
    assert not result.queued
    await assert_next(node, "awake", protocol.compose_message(result.id, tail("awake", "hi")))
    await node.fanout.publish("awake", ephemeral("marker"))
    await assert_next(node, "awake", protocol.encode({"type": "typing", "text": "marker"}))


async def test_plain_append_is_not_queued(make_nodes: MakeNodes) -> None:
    """An append without ``request`` never reports or announces a queue."""
    (node,) = make_nodes(1)
    await node.fanout.subscribe("quiet")
    result = await node.history.append("quiet", tail("quiet", "note"))
    assert not result.queued
    await assert_next(node, "quiet", protocol.compose_message(result.id, tail("quiet", "note")))
    await node.fanout.publish("quiet", ephemeral("marker"))
    await assert_next(node, "quiet", protocol.encode({"type": "typing", "text": "marker"}))


async def test_reply_to_makes_the_append_idempotent(make_nodes: MakeNodes) -> None:
    """A second reply to one request returns the first id, is marked duplicate and publishes nothing."""
    (node,) = make_nodes(1)
    await node.fanout.subscribe("bot1")
    first = await node.history.append("bot1", tail("bot1", "answer", reply_to="1-0"), reply_to="1-0")
    await assert_next(node, "bot1", protocol.compose_message(first.id, tail("bot1", "answer", reply_to="1-0")))
    again = await node.history.append("bot1", tail("bot1", "other answer", reply_to="1-0"), reply_to="1-0")
    assert (again.id, again.ts, again.duplicate) == (first.id, first.ts, True)
    await node.fanout.publish("bot1", ephemeral("marker"))
    await assert_next(node, "bot1", protocol.encode({"type": "typing", "text": "marker"}))
    other = await node.history.append("bot1", tail("bot1", "second", reply_to="2-0"), reply_to="2-0")
    assert not other.duplicate
    assert other.id != first.id
    assert ids((await node.history.read_latest("bot1", 10)).entries) == [first.id, other.id]


# -- history: trimming --------------------------------------------------------------------------


async def test_history_max_keeps_about_that_many(make_nodes: MakeNodes) -> None:
    """At least ``history_max`` newest messages stay; one with twice as many newer ones is gone."""
    (node,) = make_nodes(1, history_max=10)
    written = await appended(node, "long", 100)
    page = await node.history.read_latest("long", 1000)
    assert 10 <= len(page.entries) <= 20
    assert ids(page.entries) == written[-len(page.entries) :]
    assert page.last_id == written[-1]


async def test_history_max_age_drops_old_messages(make_nodes: MakeNodes) -> None:
    """A message older than ``history_max_age`` is gone once the room's next message is stored."""
    (node,) = make_nodes(1, history_max_age=MAX_AGE)
    old = await node.history.append("aging", tail("aging", "old"))
    await wait_past(old.ts + int(MAX_AGE * 1000))
    new = await node.history.append("aging", tail("aging", "new"))
    page = await node.history.read_latest("aging", 10)
    assert ids(page.entries) == [new.id]
    after = await node.history.read_after("aging", old.id, 10)
    assert (ids(after.entries), after.complete) == ([new.id], False)


# -- history: reads -----------------------------------------------------------------------------


async def test_read_after_a_kept_id_is_complete_and_exact(make_nodes: MakeNodes) -> None:
    """Reading after an id still in history returns exactly the later messages, complete."""
    (node,) = make_nodes(1)
    written = await appended(node, "r", 6)
    page = await node.history.read_after("r", written[2], 10)
    assert page.complete
    assert ids(page.entries) == written[3:]
    assert page.entries[0][1] == protocol.compose_message(written[3], tail("r", "m3"))
    assert page.last_id == written[-1]


async def test_read_after_exactly_limit_missed_is_complete(make_nodes: MakeNodes) -> None:
    """Missing exactly ``limit`` messages still gives all of them, complete."""
    (node,) = make_nodes(1)
    written = await appended(node, "r", 5)
    page = await node.history.read_after("r", written[1], 3)
    assert (ids(page.entries), page.complete) == (written[2:], True)


async def test_read_after_the_newest_id_is_empty_and_complete(make_nodes: MakeNodes) -> None:
    """Reading after the newest id returns nothing, complete."""
    (node,) = make_nodes(1)
    written = await appended(node, "r", 3)
    page = await node.history.read_after("r", written[-1], 10)
    assert (page.entries, page.complete, page.last_id) == ([], True, written[-1])


async def test_read_after_an_id_newer_than_all_is_empty_and_complete(make_nodes: MakeNodes) -> None:
    """An id newer than every stored message has nothing after it, so the page is empty and complete."""
    (node,) = make_nodes(1)
    written = await appended(node, "r", 3)
    future = f"{protocol.message_ts(written[-1]) + 60_000}-0"
    page = await node.history.read_after("r", future, 10)
    assert (page.entries, page.complete, page.last_id) == ([], True, written[-1])


async def test_read_after_a_trimmed_id_is_incomplete(make_nodes: MakeNodes) -> None:
    """An id history no longer reaches back to gives what is kept after it, marked incomplete."""
    (node,) = make_nodes(1, history_max=10)
    written = await appended(node, "r", 60)
    kept = ids((await node.history.read_latest("r", 1000)).entries)
    assert written[0] not in kept
    page = await node.history.read_after("r", written[0], 1000)
    assert (ids(page.entries), page.complete, page.last_id) == (kept, False, written[-1])


async def test_read_after_more_than_limit_missed_gives_the_newest(make_nodes: MakeNodes) -> None:
    """Missing more than ``limit`` messages gives the newest ``limit``, marked incomplete."""
    (node,) = make_nodes(1)
    written = await appended(node, "r", 10)
    page = await node.history.read_after("r", written[0], 3)
    assert (ids(page.entries), page.complete, page.last_id) == (written[-3:], False, written[-1])


async def test_read_after_a_trimmed_id_with_more_than_limit_kept_gives_the_newest(make_nodes: MakeNodes) -> None:
    """A trimmed id with more than ``limit`` messages kept after it gives the newest ``limit``, incomplete."""
    (node,) = make_nodes(1, history_max=10)
    written = await appended(node, "r", 60)
    page = await node.history.read_after("r", written[0], 4)
    assert (ids(page.entries), page.complete) == (written[-4:], False)


async def test_read_latest_and_last_id(make_nodes: MakeNodes) -> None:
    """read_latest gives the newest messages oldest first; last_id the newest id, None when empty."""
    (node,) = make_nodes(1)
    assert await node.history.last_id("r") is None
    empty = await node.history.read_latest("r", 5)
    assert (empty.entries, empty.last_id) == ([], None)
    written = await appended(node, "r", 5)
    page = await node.history.read_latest("r", 3)
    assert ids(page.entries) == written[-3:]
    assert [frame for _, frame in page.entries] == [
        protocol.compose_message(written[i], tail("r", f"m{i}")) for i in (2, 3, 4)
    ]
    assert page.last_id == written[-1]
    assert await node.history.last_id("r") == written[-1]
    assert await node.history.last_id("other-room") is None


# -- presence -----------------------------------------------------------------------------------


async def test_presence_counts_users_not_connections(make_nodes: MakeNodes) -> None:
    """A user's first connection joining and last one leaving are the only changes."""
    first_node, second_node = make_nodes(2)
    change = await first_node.presence.join("room", "alice", "c1")
    assert (change.changed, change.members, change.count) == (True, ["alice"], 1)
    change = await second_node.presence.join("room", "alice", "c2")
    assert (change.changed, change.members, change.count) == (False, ["alice"], 1)
    change = await first_node.presence.join("room", "bob", "c3")
    assert (change.changed, sorted(change.members), change.count) == (True, ["alice", "bob"], 2)
    change = await first_node.presence.leave("room", "alice", "c1")
    assert (change.changed, change.count) == (False, 2)
    change = await second_node.presence.leave("room", "alice", "c2")
    assert (change.changed, change.count) == (True, 1)
    change = await second_node.presence.leave("room", "alice", "c2")
    assert (change.changed, change.count) == (False, 1)
    other = await first_node.presence.join("other-room", "carol", "c4")
    assert (other.changed, other.members, other.count) == (True, ["carol"], 1)


async def test_presence_limit_caps_members_not_count(make_nodes: MakeNodes) -> None:
    """Above the presence limit, members lists at most that many users while count is exact."""
    (node,) = make_nodes(1, presence_limit=3)
    users = [f"user{i}" for i in range(6)]
    for i, user in enumerate(users):
        change = await node.presence.join("big", user, f"c{i}")
    assert change.count == 6
    assert len(change.members) == 3
    assert set(change.members) <= set(users)


async def test_presence_expires_unrefreshed_connections(make_nodes: MakeNodes) -> None:
    """Connections not refreshed within the TTL expire; refreshed ones stay."""
    (node,) = make_nodes(1, presence_ttl=TTL)
    await node.presence.join("room", "stale", "s1")
    await node.presence.join("room", "live", "l1")
    await node.presence.refresh([("room", "ghost", "g1")])  # refreshing an unknown entry adds nothing
    deadline = time.monotonic() + TIMEOUT
    gone: list[str] = []
    while not gone:
        assert time.monotonic() < deadline, "the unrefreshed connection never expired"
        await node.presence.refresh([("room", "live", "l1")])
        gone = await node.presence.expire("room")
        if not gone:
            await asyncio.sleep(0.02)
    assert gone == ["stale"]
    change = await node.presence.join("room", "newcomer", "n1")
    assert (sorted(change.members), change.count) == (["live", "newcomer"], 2)
    assert await node.presence.expire("room") == []


async def test_presence_expiry_keeps_a_user_with_another_live_connection(make_nodes: MakeNodes) -> None:
    """A user whose stale connection expires stays present through a refreshed one."""
    (node,) = make_nodes(1, presence_ttl=TTL)
    await node.presence.join("room", "alice", "stale")
    await node.presence.join("room", "alice", "live")
    await node.presence.join("room", "bob", "b1")
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert time.monotonic() < deadline, "bob's connection never expired"
        await node.presence.refresh([("room", "alice", "live")])
        if await node.presence.expire("room") == ["bob"]:
            break
        await asyncio.sleep(0.02)
    change = await node.presence.leave("room", "alice", "live")
    assert (change.changed, change.count) == (True, 0)


# -- revocations --------------------------------------------------------------------------------


async def test_revocation_is_seen_by_every_node(make_nodes: MakeNodes) -> None:
    """A revocation recorded on one node is read back on another; other users stay unrevoked."""
    writer, reader = make_nodes(2)
    assert await reader.revocations.revoked_at("mallory") is None
    at = time.time()
    await writer.revocations.revoke("mallory", at, 60)
    assert await reader.revocations.revoked_at("mallory") == at
    assert await reader.revocations.revoked_at("alice") is None


async def test_a_later_revocation_replaces_the_earlier_one(make_nodes: MakeNodes) -> None:
    """Revoking a user again moves the moment before which their tokens are refused."""
    (node,) = make_nodes(1)
    await node.revocations.revoke("mallory", 1000.5, 60)
    await node.revocations.revoke("mallory", 2000.25, 60)
    assert await node.revocations.revoked_at("mallory") == 2000.25


async def test_revocation_lasts_its_whole_ttl_then_expires(make_nodes: MakeNodes) -> None:
    """A revocation is kept for at least its TTL, fractions of a second included, and forgotten after it."""
    (node,) = make_nodes(1)
    ttl = 1.2  # not a whole number of seconds: a store that rounds it down would forget too early
    started = time.monotonic()
    await node.revocations.revoke("mallory", 1000.0, ttl)
    deadline = started + ttl + TIMEOUT
    while await node.revocations.revoked_at("mallory") is not None:
        assert time.monotonic() < deadline, "the revocation never expired"
        await asyncio.sleep(0.02)
    assert time.monotonic() - started >= ttl
    await node.revocations.revoke("mallory", 3000.0, 60)  # an expired revocation does not block a new one
    assert await node.revocations.revoked_at("mallory") == 3000.0


# -- bot registry -------------------------------------------------------------------------------


async def test_registry_create_get_and_list(make_nodes: MakeNodes) -> None:
    """Bots are listed for their owner, their members and admins, oldest first."""
    writer, reader = make_nodes(2)
    assert await reader.registry.get("b1") is None
    first, second = make_bot("b1", owner="olivia", created=10), make_bot("b2", owner="oscar", created=20)
    await writer.registry.create(second)
    await writer.registry.create(first)
    assert await reader.registry.get("b1") == first
    assert await reader.registry.list_for("olivia", is_admin=False) == [first]
    assert await reader.registry.list_for("nobody", is_admin=False) == []
    assert await reader.registry.list_for("nobody", is_admin=True) == [first, second]
    await writer.registry.add_member("b2", "olivia")
    assert await reader.registry.members("b2") == {"olivia"}
    assert await reader.registry.list_for("olivia", is_admin=False) == [first, second]
    await writer.registry.add_member("b2", "mia")
    await writer.registry.remove_member("b2", "olivia")
    assert await reader.registry.members("b2") == {"mia"}
    assert await reader.registry.list_for("olivia", is_admin=False) == [first]
    assert await reader.registry.list_for("mia", is_admin=False) == [second]


async def test_registry_delete_removes_bot_members_and_history(make_nodes: MakeNodes) -> None:
    """Deleting a bot removes it from every listing, drops its members and its room's history."""
    (node,) = make_nodes(1)
    await node.registry.create(make_bot("doomed"))
    await node.registry.add_member("doomed", "mia")
    await node.registry.set_status("doomed", BotStatus.RUNNING)
    await node.history.append("doomed", tail("doomed", "last words"))
    await node.registry.delete("doomed")
    assert await node.registry.get("doomed") is None
    assert await node.registry.members("doomed") == set()
    assert await node.registry.list_for("olivia", is_admin=False) == []
    assert await node.registry.list_for("mia", is_admin=False) == []
    assert await node.registry.list_for("admin", is_admin=True) == []
    assert "doomed" not in await node.registry.running()
    assert await node.history.last_id("doomed") is None
    await node.registry.delete("doomed")  # deleting twice is harmless


async def test_set_status_publishes_and_tracks_running(make_nodes: MakeNodes) -> None:
    """set_status stores the status, announces ``bot_status`` to the room and updates running()."""
    writer, listener = make_nodes(2)
    await writer.registry.create(make_bot("worker-bot"))
    await listener.fanout.subscribe("worker-bot")
    assert await writer.registry.running() == set()
    for status in (BotStatus.STARTING, BotStatus.RUNNING):
        bot = await writer.registry.set_status("worker-bot", status)
        assert bot is not None
        assert bot.status is status
        event = await assert_next(listener, "worker-bot")
        frame = orjson.loads(event.frame)
        assert (event.message_id, frame["type"], frame["bot"], frame["status"]) == (
            "",
            "bot_status",
            "worker-bot",
            status,
        )
        assert "error" not in frame
        assert await listener.registry.running() == {"worker-bot"}
    bot = await writer.registry.set_status("worker-bot", BotStatus.ERROR, "it broke")
    assert bot is not None
    assert (bot.status, bot.error) == (BotStatus.ERROR, "it broke")
    frame = orjson.loads((await assert_next(listener, "worker-bot")).frame)
    assert (frame["status"], frame["error"]) == ("error", "it broke")
    assert await listener.registry.running() == set()
    stored = await listener.registry.get("worker-bot")
    assert stored is not None
    assert (stored.status, stored.error) == (BotStatus.ERROR, "it broke")
    await writer.registry.set_status("worker-bot", BotStatus.STOPPED)
    stored = await listener.registry.get("worker-bot")
    assert stored is not None
    assert (stored.status, stored.error) == (BotStatus.STOPPED, None)


async def test_set_status_of_an_unknown_bot_is_none(make_nodes: MakeNodes) -> None:
    """set_status of a bot that does not exist returns None, publishes nothing and creates nothing."""
    (node,) = make_nodes(1)
    await node.fanout.subscribe("ghost")
    assert await node.registry.set_status("ghost", BotStatus.RUNNING) is None
    assert await node.registry.get("ghost") is None
    assert await node.registry.running() == set()
    await node.fanout.publish("ghost", ephemeral("marker"))
    await assert_next(node, "ghost", protocol.encode({"type": "typing", "text": "marker"}))


# -- Redis only ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["redis"])
async def test_one_redis_subscription_per_room_per_node(make_nodes: MakeNodes) -> None:
    """However often subscribe() is called, each node sends one SUBSCRIBE per room."""
    nodes = make_nodes(3)
    pipe, keys = nodes[0].pipe, nodes[0].keys
    assert keys is not None
    before = await subscribe_calls(pipe)
    for _ in range(3):
        await asyncio.gather(*(node.fanout.subscribe("shared") for node in nodes for _ in range(4)))
    _, subscribers = await pipe.execute("PUBSUB", "NUMSUB", keys.channel("shared"))
    assert subscribers == len(nodes)
    assert await subscribe_calls(pipe) - before == len(nodes)


async def subscribe_calls(pipe: CommandPipe) -> int:
    stats = (await redis_info(pipe, "commandstats"))["cmdstat_subscribe"]
    return int(stats["calls"])


@pytest.mark.parametrize("backend", ["redis"])
async def test_command_pipe_survives_a_burst(make_nodes: MakeNodes) -> None:
    """2,000 concurrent commands on one pipe all succeed, answered in the order they were queued."""
    (node,) = make_nodes(1)
    assert node.keys is not None
    key = node.keys.history("counter") + ":n"
    replies = await asyncio.gather(*(node.pipe.call("INCR", key) for _ in range(2000)))
    assert replies == list(range(1, 2001))
    results = await asyncio.gather(*(node.history.append("burst", tail("burst", str(i))) for i in range(2000)))
    assert len({r.id for r in results}) == 2000
    assert (await node.history.last_id("burst")) == results[-1].id


async def test_set_status_with_expect_changes_only_from_those_statuses(make_nodes: MakeNodes) -> None:
    """set_status(expect=...) leaves a bot in another status untouched and announces nothing."""
    (node,) = make_nodes(1)
    await node.registry.create(make_bot("contested"))
    await node.fanout.subscribe("contested")
    assert await node.registry.set_status("contested", BotStatus.STOPPING, expect=(BotStatus.RUNNING,)) is None
    assert (await node.registry.get("contested")).status is BotStatus.STOPPED
    moved = await node.registry.set_status("contested", BotStatus.STARTING, expect=(BotStatus.STOPPED,))
    assert moved is not None
    assert moved.status is BotStatus.STARTING
    event = await assert_next(node, "contested")
    assert orjson.loads(event.frame)["status"] == "starting"
    assert await node.registry.set_status("contested", BotStatus.RUNNING, expect=(BotStatus.STOPPED,)) is None
    await node.fanout.publish("contested", ephemeral("marker"))
    await assert_next(node, "contested", protocol.encode({"type": "typing", "text": "marker"}))


async def test_full_inbox_refuses_a_request_and_stores_nothing(make_nodes: MakeNodes) -> None:
    """A request to a bot whose inbox is full raises InboxFull and is neither stored nor published."""
    from shared.broker import InboxFull

    (node,) = make_nodes(1, inbox_max=2)
    await node.registry.create(make_bot("swamped"))
    await node.fanout.subscribe("swamped")
    kept = [await node.history.append("swamped", tail("swamped", f"m{i}"), request=True) for i in range(2)]
    with pytest.raises(InboxFull):
        await node.history.append("swamped", tail("swamped", "one too many"), request=True)
    assert await node.history.last_id("swamped") == kept[-1].id
    plain = await node.history.append("swamped", tail("swamped", "a note is not a request"))
    assert await node.history.last_id("swamped") == plain.id


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_read_loop_that_dies_is_restarted_and_reports_a_gap(
    make_nodes: MakeNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error inside the pub/sub read loop restarts it on a new connection; delivery goes on."""
    listener, publisher = make_nodes(2)
    fanout = listener.fanout
    assert isinstance(fanout, RedisFanOut)
    gaps = asyncio.Event()
    fanout.set_gap_handler(gaps.set)
    await fanout.subscribe("lobby")
    link = next(iter(fanout._subscriber._links.values()))
    failed = False

    async def next_event_failing_once(pubsub: Any) -> Any:
        nonlocal failed
        if pubsub is link.pubsub and not failed:
            failed = True
            raise RuntimeError("a reader bug")  # no error the loop expects: it ends the task
        return await next_event(pubsub)

    monkeypatch.setattr(redis_pubsub, "next_event", next_event_failing_once)
    await publisher.fanout.publish("lobby", ephemeral("wakes the reader"))
    await asyncio.wait_for(gaps.wait(), TIMEOUT)
    assert failed
    assert fanout._subscriber.restarts == 1
    await publisher.fanout.publish("lobby", ephemeral("after the restart"))
    while (event := await listener.next_event()).frame != protocol.encode(
        {"type": "typing", "text": "after the restart"}
    ):
        assert event.room == "lobby"  # the first event may or may not have been read before the failure
