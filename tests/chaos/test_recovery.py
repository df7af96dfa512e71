"""Recovery with since across nodes: a client that drops mid-stream resumes on another node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.chaos.conftest import GENEROUS_LIMITS, check_sequence, create_room, delivered_after_baseline, post_message
from tests.chaos.resilient import ResilientClient, id_key
from tests.conftest import make_token
from tests.procs import GatewayNode, RedisServer

pytestmark = pytest.mark.slow
SENT = 200
RATE = 100.0  # messages per second
DROP_AT, BACK_AT = 50, 120  # acknowledged messages when the reader goes away and when it comes back


@pytest.fixture
def two_nodes(redis_server: RedisServer, redis_prefix: str) -> Iterator[tuple[GatewayNode, GatewayNode]]:
    env = {**GENEROUS_LIMITS, "CHAT_REDIS_PREFIX": redis_prefix}
    a = GatewayNode(redis_server.url, "a", **env)
    b = GatewayNode(redis_server.url, "b", **env)
    yield a, b
    codes = [a.terminate(), b.terminate()]
    assert codes == [0, 0], a.log()[-3000:] + b.log()[-3000:]


async def send_paced(sender: ResilientClient, room: str, marks: dict[int, asyncio.Event]) -> list[str]:
    """Send SENT messages at RATE per second, one after the other; set marks[n] after n acks."""
    started = time.monotonic()
    ids = []
    for n in range(SENT):
        acked = await sender.send(room, f"m{n}")
        ids.append(acked.id)
        if len(ids) in marks:
            marks[len(ids)].set()
        pause = started + (n + 1) / RATE - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)  # pacing the sender, not waiting for an event
    return ids


async def test_client_resumes_on_another_node_mid_stream_without_gap_or_duplicate(
    two_nodes: tuple[GatewayNode, GatewayNode], http: aiohttp.ClientSession
) -> None:
    """A reader that drops on node A and resumes on node B with since ends with exactly the sent sequence."""
    a, b = two_nodes
    room = await create_room(http, a.url, "sender", ["reader"])
    await post_message(http, a.url, "sender", room, "before the stream")
    sender = ResilientClient(http, [a.url], make_token("sender"), [room], name="sender")
    reader = ResilientClient(http, [a.url, b.url], make_token("reader"), [room], name="reader")
    rejoined: dict[str, Any] = {}

    def on_joined(_: str, frame: dict[str, Any]) -> None:
        if len(reader.rooms[room].joins) == 2:
            rejoined.update(frame, at=time.monotonic())

    reader.on_joined = on_joined
    await sender.start()
    await reader.start()
    try:
        marks = {DROP_AT: asyncio.Event(), BACK_AT: asyncio.Event()}
        sending = asyncio.create_task(send_paced(sender, room, marks))
        await asyncio.wait_for(marks[DROP_AT].wait(), 30)
        await reader.hold()
        last_before = reader.rooms[room].last_id
        await asyncio.wait_for(marks[BACK_AT].wait(), 30)
        reconnect_started = time.monotonic()
        reader.release()
        await reader.wait_ready(20)
        newest_at_join = rejoined["last_id"]
        await reader.wait_delivered(room, [newest_at_join], timeout=20)
        caught_up = time.monotonic() - reconnect_started
        sent_ids = await asyncio.wait_for(sending, 60)
        await reader.wait_delivered(room, sent_ids, timeout=20)
    finally:
        await sender.close()
        await reader.close()

    got = delivered_after_baseline(reader, room)
    assert last_before is not None
    missed = [i for i in sent_ids if id_key(last_before) < id_key(i) <= id_key(newest_at_join)]
    print(
        f"\nrecovery: reader back on {reader.nodes[-1]} (was {reader.nodes[0]}); "
        f"reconnect-to-caught-up {caught_up * 1000:.0f} ms; messages sent {len(sent_ids)}, "
        f"delivered {len(got)}, replayed on rejoin {len(missed)}, newest at rejoin {newest_at_join}, recovered={rejoined['recovered']}"
    )
    assert reader.nodes == [a.node_id, b.node_id]
    assert rejoined["recovered"] is True
    assert got == sent_ids, "the reader's messages differ from the sent sequence"
    assert check_sequence(reader.rooms[room].ids()) == ([], [])
    assert reader.rooms[room].duplicates == []
    assert reader.rooms[room].disorder == []
    assert len(sender.acked) == SENT
    assert sender.resends == 0
    assert len(missed) >= BACK_AT - DROP_AT - 5


async def test_since_older_than_history_is_not_recovered(redis_server: RedisServer, redis_prefix: str) -> None:
    """A since that history no longer holds gives recovered false and the newest kept messages, in order."""
    env = {**GENEROUS_LIMITS, "CHAT_REDIS_PREFIX": redis_prefix, "CHAT_HISTORY_MAX": "5"}
    node = GatewayNode(redis_server.url, "short", **env)
    try:
        async with aiohttp.ClientSession() as http:
            room = await create_room(http, node.url, "owner", ["reader"])
            await post_message(http, node.url, "owner", room, "seed")
            reader = ResilientClient(http, [node.url], make_token("reader"), [room], name="reader")
            await reader.start()
            try:
                first = await post_message(http, node.url, "owner", room, "first")
                await reader.wait_delivered(room, [first], timeout=10)
                await reader.hold()
                later = [await post_message(http, node.url, "owner", room, f"later {n}") for n in range(20)]
                reader.release()
                await reader.wait_ready(20)
                await reader.wait_delivered(room, later[-5:], timeout=10)
            finally:
                await reader.close()
    finally:
        assert node.terminate() == 0, node.log()[-3000:]
    rejoin = reader.rooms[room].joins[1]
    replayed = reader.rooms[room].ids()[1:]
    print(f"\nstale since: recovered={rejoin['recovered']}, replayed {len(replayed)} of the 20 missed")
    assert rejoin["recovered"] is False
    assert len(replayed) >= 5
    assert replayed == later[-len(replayed) :]
    assert reader.rooms[room].duplicates == []
    assert reader.rooms[room].disorder == []
