"""The contract of replies in progress, cancels and client ids, on both brokers.

A reply's pieces are kept and published in one step, so what a joiner reads and the deltas it
gets live fit together; a later attempt starts the reply again; the final append ends it. A
message resent with the same client id is stored once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from shared import packets, protocol
from shared import server_frames as sf
from shared.broker.base import ClientId, ReplyCancelled
from shared.models import Bot, BotStatus
from shared.packets import StreamPosition
from tests.broker.conftest import TIMEOUT, MakeNodes, Node

ROOM = "b1"
REQUEST = "1700000000000-0"


def delta(position: StreamPosition, piece: str) -> bytes:
    frame = sf.encode(sf.Delta(ROOM, position.reply_to, piece, position.attempt, position.seq))
    return packets.pack(frame, position=position)


async def push(node: Node, attempt: int, seq: int, piece: str, reply_to: str = REQUEST) -> bool:
    position = StreamPosition(reply_to, attempt, seq)
    return await node.broker.replies.push(ROOM, position, piece, delta(position, piece))


def user_tail(text: str, user: str = "alice", client_id: str | None = None) -> bytes:
    return protocol.message_tail(ROOM, {"kind": "user", "id": user}, text, client_id=client_id)


async def until(check: object, what: str) -> None:
    """Wait, without a fixed sleep, until the coroutine function ``check`` returns True."""
    deadline = time.monotonic() + TIMEOUT
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_pieces_are_kept_and_published_together(make_nodes: MakeNodes) -> None:
    writer, reader = make_nodes(2)
    await reader.fanout.subscribe(ROOM)
    for seq, piece in enumerate(["Hel", "lo, ", "world"], start=1):
        assert await push(writer, 1, seq, piece)
        event = await reader.next_event()
        assert event.frame == sf.encode(sf.Delta(ROOM, REQUEST, piece, 1, seq))
    (reply,) = await reader.broker.replies.in_flight(ROOM)
    assert (reply.position, reply.text) == (StreamPosition(REQUEST, 1, 3), "Hello, world")
    assert await reader.broker.replies.in_flight("another-room") == []


async def test_a_later_attempt_starts_again_and_an_earlier_one_is_refused(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await node.fanout.subscribe(ROOM)
    await push(node, 1, 1, "first try")
    await node.next_event()
    assert await push(node, 2, 0, "")  # the new attempt announces itself
    await node.next_event()
    assert await push(node, 2, 1, "second")
    await node.next_event()
    assert not await push(node, 1, 2, " zombie")  # the worker of attempt 1 is still going
    (reply,) = await node.broker.replies.in_flight(ROOM)
    assert (reply.position, reply.text) == (StreamPosition(REQUEST, 2, 1), "second")
    await node.fanout.publish(ROOM, packets.pack(b'{"type":"typing"}'))
    assert (await node.next_event()).frame == b'{"type":"typing"}'  # nothing of the zombie was published


async def test_the_final_reply_ends_the_stream_and_clear_forgets_one(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await push(node, 1, 1, "Hi")
    await push(node, 1, 1, "other", reply_to="1700000000001-0")
    tail = protocol.message_tail(ROOM, {"kind": "bot", "id": ROOM}, "Hi there", reply_to=REQUEST)
    await node.history.append(ROOM, tail, reply_to=REQUEST)
    assert [r.position.reply_to for r in await node.broker.replies.in_flight(ROOM)] == ["1700000000001-0"]
    await node.broker.replies.clear(ROOM, "1700000000001-0")
    assert await node.broker.replies.in_flight(ROOM) == []


async def test_a_reply_left_behind_expires(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1, stream_ttl=1)
    await push(node, 1, 1, "a worker died here")

    async def gone() -> bool:
        return await node.broker.replies.in_flight(ROOM) == []

    await until(gone, "the reply in progress did not expire")


async def test_the_kept_text_is_bounded(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1, stream_max_bytes=8)
    await node.fanout.subscribe(ROOM)
    await push(node, 1, 1, "12345")
    await push(node, 1, 2, "678")
    await push(node, 1, 3, "9")  # past the bound: published, not kept
    for _ in range(3):
        await node.next_event()
    (reply,) = await node.broker.replies.in_flight(ROOM)
    assert (reply.position.seq, reply.text) == (2, "12345678")


async def test_a_resent_client_id_is_stored_and_published_once(make_nodes: MakeNodes) -> None:
    writer, reader = make_nodes(2)
    await reader.fanout.subscribe(ROOM)
    sent = ClientId("alice", "tab-1:42")
    first = await writer.history.append(ROOM, user_tail("hi", client_id="tab-1:42"), client_id=sent)
    again = await reader.history.append(ROOM, user_tail("hi", client_id="tab-1:42"), client_id=sent)
    assert (again.id, again.ts, again.duplicate) == (first.id, first.ts, True)
    other_user = await writer.history.append(
        ROOM, user_tail("hi", "bob", "tab-1:42"), client_id=ClientId("bob", "tab-1:42")
    )
    assert other_user.id != first.id
    assert [e.message_id for e in [await reader.next_event(), await reader.next_event()]] == [first.id, other_user.id]
    page = await reader.history.read_latest(ROOM, 10)
    assert [entry_id for entry_id, _ in page.entries] == [first.id, other_user.id]


async def test_a_client_id_is_forgotten_after_the_window(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1, client_id_window=1)
    sent = ClientId("alice", "c1")
    first = await node.history.append(ROOM, user_tail("hi"), client_id=sent)

    async def stored_anew() -> bool:
        return (await node.history.append(ROOM, user_tail("hi"), client_id=sent)).id != first.id

    await until(stored_anew, "the client id was remembered past its window")


async def test_a_request_tells_its_sender_and_where_its_reply_is(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await node.registry.create(Bot(ROOM, "helper", "echo", "olga", status=BotStatus.RUNNING))
    request = await node.history.append(ROOM, user_tail("question"), request=True)
    replies = node.broker.replies
    info = await replies.request(ROOM, request.id)
    assert (info.sender, info.answered, info.streaming, info.cancelled) == ("alice", False, False, False)
    await push(node, 1, 1, "ans", reply_to=request.id)
    assert (await replies.request(ROOM, request.id)).streaming
    tail = protocol.message_tail(ROOM, {"kind": "bot", "id": ROOM}, "answer", reply_to=request.id)
    reply = await node.history.append(ROOM, tail, reply_to=request.id)
    info = await replies.request(ROOM, request.id)
    assert (info.answered, info.streaming) == (True, False)
    assert (await replies.request(ROOM, reply.id)).sender is None  # the bot's message is no request
    assert (await replies.request(ROOM, "1-1")).sender is None  # no such message


@pytest.mark.parametrize("announced", [False, True])
async def test_a_cancel_is_marked_and_heard_by_every_worker(make_nodes: MakeNodes, announced: bool) -> None:
    gateway, worker = make_nodes(2)
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    worker.broker.replies.on_cancel(lambda room, message_id: heard.put_nowait((room, message_id)))
    stop = asyncio.Event()

    async def listen() -> None:  # a worker waits on its control channel all the time
        while not stop.is_set():
            await worker.broker.workers.wait_bots_changed(0.2)

    listening = asyncio.create_task(listen())
    try:
        await asyncio.sleep(0)
        assert await gateway.broker.replies.cancel_mark(ROOM, REQUEST) is None

        async def heard_one() -> bool:
            await gateway.broker.replies.cancel(ROOM, REQUEST, announced=announced)
            try:
                assert await asyncio.wait_for(heard.get(), 0.5) == (ROOM, REQUEST)
            except TimeoutError:
                return False  # the listener was not subscribed yet: cancels may be asked again
            return True

        await until(heard_one, "no worker heard the cancel")
        mark = await worker.broker.replies.cancel_mark(ROOM, REQUEST)
        assert mark == ("announced" if announced else "announce")
        assert (await worker.broker.replies.request(ROOM, REQUEST)).cancelled
    finally:
        stop.set()
        await listening


async def test_starting_a_request_is_announced_unless_it_was_cancelled(make_nodes: MakeNodes) -> None:
    gateway, worker = make_nodes(2)
    await gateway.fanout.subscribe(ROOM)
    processing = packets.pack(sf.encode(sf.Status(ROOM, REQUEST, "processing")))
    assert await worker.broker.replies.start(ROOM, REQUEST, processing) is None
    assert (await gateway.next_event()).frame == sf.encode(sf.Status(ROOM, REQUEST, "processing"))
    await gateway.broker.replies.cancel(ROOM, "1700000000005-0", announced=True)
    later = packets.pack(sf.encode(sf.Status(ROOM, "1700000000005-0", "processing")))
    assert await worker.broker.replies.start(ROOM, "1700000000005-0", later) == "announced"
    await gateway.fanout.publish(ROOM, packets.pack(b'{"type":"typing"}'))
    assert (await gateway.next_event()).frame == b'{"type":"typing"}'  # nothing was announced


async def test_a_cancelled_requests_reply_is_refused_unless_it_is_the_cancelled_one(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await node.broker.replies.cancel(ROOM, REQUEST, announced=False)
    tail = protocol.message_tail(ROOM, {"kind": "bot", "id": ROOM}, "too late", reply_to=REQUEST)
    with pytest.raises(ReplyCancelled):
        await node.history.append(ROOM, tail, reply_to=REQUEST)
    assert (await node.history.read_latest(ROOM, 5)).entries == []
    partial = protocol.message_tail(ROOM, {"kind": "bot", "id": ROOM}, "so far", reply_to=REQUEST, state="cancelled")
    stored = await node.history.append(ROOM, partial, reply_to=REQUEST, cancelled=True)
    assert [entry_id for entry_id, _ in (await node.history.read_latest(ROOM, 5)).entries] == [stored.id]


async def test_a_cancelled_requests_pieces_are_refused(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await node.fanout.subscribe(ROOM)
    assert await push(node, 1, 1, "before ")
    await node.next_event()
    await node.broker.replies.cancel(ROOM, REQUEST, announced=False)
    assert not await push(node, 1, 2, "after")
    (reply,) = await node.broker.replies.in_flight(ROOM)
    assert reply.text == "before "
    await node.fanout.publish(ROOM, packets.pack(b'{"type":"typing"}'))
    assert (await node.next_event()).frame == b'{"type":"typing"}'  # the refused piece was not published
