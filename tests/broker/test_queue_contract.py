"""One contract suite for bot inboxes, leases and the worker roster, over memory and Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from shared import packets, protocol
from shared.broker import Broker, make_broker
from shared.broker.memory_queue import MemoryBotQueue
from shared.broker.queue import BotQueue, GroupMissing
from tests.broker.conftest import node_settings, redis_info
from tests.procs import scaled

BOT = "bot1"
OTHER = "bot2"
BOT_SENDER = {"kind": "bot", "id": BOT}


@dataclass
class Harness:
    broker: Broker  # one worker's broker
    peer_broker: Broker  # another worker's broker on the same shared state
    queue: BotQueue  # the inboxes as the first worker sees them
    peer: BotQueue  # and as the other one sees them
    drop_inbox: Callable[[str], Any]  # delete the bot, and with it its inbox
    mark_answered: Callable[[str, str], Any]  # append a reply to a message to history
    blocked: Callable[[], Any]  # true while a read waits
    heard: list[bytes]  # announcements published to BOT's room (not history messages), in arrival order


def frame(message_id: str, text: str) -> bytes:
    ts = int(message_id.partition("-")[0])
    sender = {"kind": "user", "id": "alice"}
    return orjson.dumps({"type": "message", "id": message_id, "ts": ts, "room": BOT, "from": sender, "text": text})


async def enqueue(queue: BotQueue, bot: str, text: str) -> str:
    message_id = f"{int(time.time() * 1000)}-{text.__hash__() & 0xFFFF}"
    await queue.enqueue(bot, message_id, frame(message_id, text))
    return message_id


@pytest.fixture(params=["memory", "redis"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Two workers' brokers built by ``make_broker`` on one shared state, memory or Redis."""
    settings = node_settings(request.param, request)
    worker = make_broker(settings)
    other = make_broker(settings, store=worker.store)
    heard: list[bytes] = []

    def hear(_: str, packet: bytes) -> None:
        if not packets.unpack(packet).message_id:  # announcements, not the replies history publishes
            heard.append(packet)

    async def mark(bot: str, message_id: str) -> None:
        await worker.history.append(bot, protocol.message_tail(bot, BOT_SENDER, "answer"), reply_to=message_id)

    async def blocked() -> bool:
        if isinstance(worker.queue, MemoryBotQueue):
            return bool(worker.queue._waiters)
        return int((await redis_info(worker.pipe, "clients"))["blocked_clients"]) > 0

    other.fanout.set_handler(hear)
    await other.fanout.subscribe(BOT)
    yield Harness(worker, other, worker.queue, other.queue, worker.registry.delete, mark, blocked, heard)
    await other.close()
    await worker.close()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 5) -> None:
    """Poll an async predicate until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_read_delivers_requests_in_order_one_per_bot(harness: Harness) -> None:
    """A read hands out the oldest new request of each bot, decoded, one per bot."""
    q = harness.queue
    for bot in (BOT, OTHER):
        await q.ensure_group(bot)
    first = await enqueue(q, BOT, "one")
    await enqueue(q, BOT, "two")
    other = await enqueue(q, OTHER, "three")
    got = await q.read("w1", [BOT, OTHER], block=0)
    assert sorted((r.bot, r.message_id, r.text, r.attempts) for r in got) == [
        (BOT, first, "one", 1),
        (OTHER, other, "three", 1),
    ]
    request = next(r for r in got if r.bot == BOT)
    assert request.sender == {"kind": "user", "id": "alice"}
    assert request.ts == int(first.partition("-")[0])
    assert request.problem is None
    again = await q.read("w1", [BOT, OTHER], block=0)
    assert [(r.bot, r.text) for r in again] == [(BOT, "two")]


async def test_requests_queued_before_the_group_are_kept(harness: Harness) -> None:
    """Requests sent while no worker ever served the bot are delivered once its group exists."""
    q = harness.queue
    await enqueue(q, BOT, "early")
    await q.ensure_group(BOT)
    await q.ensure_group(BOT)  # idempotent
    assert [r.text for r in await q.read("w1", [BOT], block=0)] == ["early"]


async def test_read_waits_for_a_request(harness: Harness) -> None:
    """A blocking read returns as soon as a request arrives."""
    q = harness.queue
    await q.ensure_group(BOT)
    assert await q.read("w1", [BOT], block=0.05) == []
    reading = asyncio.ensure_future(q.read("w1", [BOT], block=scaled(10)))
    await until(harness.blocked, "the read to block")
    started = time.monotonic()
    await enqueue(harness.peer, BOT, "late")
    got = await asyncio.wait_for(reading, scaled(5))
    assert [r.text for r in got] == ["late"]
    assert time.monotonic() - started < scaled(2)


async def test_wake_ends_a_blocked_read(harness: Harness) -> None:
    """wake() makes a waiting read return at once, and a wake with no read waiting skips the next wait."""
    q = harness.queue
    await q.ensure_group(BOT)
    reading = asyncio.ensure_future(q.read("w1", [BOT], block=scaled(10)))
    await until(harness.blocked, "the read to block")
    await q.wake()
    assert await asyncio.wait_for(reading, scaled(2)) == []
    await q.wake()
    started = time.monotonic()
    assert await q.read("w1", [BOT], block=scaled(10)) == []
    assert time.monotonic() - started < scaled(2)


async def test_ack_forgets_the_request(harness: Harness) -> None:
    """An acknowledged request is neither pending nor waiting any more."""
    q = harness.queue
    await q.ensure_group(BOT)
    await enqueue(q, BOT, "one")
    await enqueue(q, BOT, "two")
    backlog = await q.backlog(BOT)
    assert (backlog.waiting, backlog.pending) == (2, 0)
    assert 0 <= backlog.oldest_age < scaled(5)
    [request] = await q.read("w1", [BOT], block=0)
    assert (await q.backlog(BOT)).pending == 1
    await q.ack(request)
    backlog = await q.backlog(BOT)
    assert (backlog.waiting, backlog.pending) == (1, 0)
    assert await q.pending(BOT) == 0


async def test_ack_after_the_reply_waits_for_it_and_announces_once(harness: Harness) -> None:
    """An ack that needs the reply changes nothing until the reply is stored; an announcement goes out with the ack only."""
    q = harness.queue
    await q.ensure_group(BOT)
    first = await enqueue(q, BOT, "one")
    second = await enqueue(q, BOT, "two")
    [request] = await q.read("w1", [BOT], block=0)
    done = packets.pack(b'{"type":"status","state":"done"}')
    assert not await q.ack(request, reply_stored=True, announce=packets.pack(b'{"early":true}'))
    assert await q.pending(BOT) == 1
    await harness.mark_answered(BOT, first)
    assert await q.ack(request, reply_stored=True, announce=done)
    assert await q.pending(BOT) == 0
    assert not await q.ack(request, announce=packets.pack(b'{"again":true}'))  # gone: no second announcement
    [later] = await q.read("w1", [BOT], block=0)
    assert later.message_id == second
    last = packets.pack(b'{"type":"status","state":"last"}')
    assert await q.ack(later, announce=last)  # without reply_stored it needs no reply

    async def both_heard() -> bool:
        return len(harness.heard) >= 2

    await until(both_heard, "the announcements")
    assert harness.heard == [done, last]  # one channel keeps the order: nothing came in between
    assert (await q.backlog(BOT)).waiting == 0


async def test_reclaim_moves_stale_requests_and_counts_attempts(harness: Harness) -> None:
    """Another worker reclaims a pending request once it is idle long enough, oldest first."""
    q, peer = harness.queue, harness.peer
    await q.ensure_group(BOT)
    await enqueue(q, BOT, "one")
    [first] = await q.read("w1", [BOT], block=0)
    assert await peer.reclaim("w2", BOT, min_idle=60) == []
    [claimed] = await peer.reclaim("w2", BOT, min_idle=0)
    assert (claimed.entry_id, claimed.text, claimed.attempts) == (first.entry_id, "one", 2)
    [again] = await q.reclaim("w3", BOT, min_idle=0)
    assert again.attempts == 3
    await q.ack(again)
    assert await peer.reclaim("w2", BOT, min_idle=0) == []


async def test_reclaim_drops_pending_entries_whose_message_is_gone(harness: Harness) -> None:
    """A pending entry deleted from the inbox is not handed out again."""
    q = harness.queue
    await q.ensure_group(BOT)
    await enqueue(q, BOT, "one")
    [request] = await q.read("w1", [BOT], block=0)
    await q.ack(request)
    await q.ack(request)  # twice is harmless
    assert await q.reclaim("w2", BOT, min_idle=0) == []


async def test_released_request_is_reclaimable_at_once_in_its_place(harness: Harness) -> None:
    """A request given back stays pending and is the first one the next worker reclaims."""
    q, peer = harness.queue, harness.peer
    await q.ensure_group(BOT)
    await enqueue(q, BOT, "one")
    await enqueue(q, BOT, "two")
    [first] = await q.read("w1", [BOT], block=0)
    await q.release("w1", first)
    assert await q.pending(BOT) == 1
    [again] = await peer.reclaim("w2", BOT, min_idle=3600)
    assert (again.entry_id, again.text, again.attempts) == (first.entry_id, "one", 2)
    assert await peer.reclaim("w2", BOT, min_idle=3600) == []


async def test_retry_counts_another_attempt(harness: Harness) -> None:
    """retry() counts a delivery; a request that was answered meanwhile is gone."""
    q = harness.queue
    await q.ensure_group(BOT)
    await enqueue(q, BOT, "one")
    [request] = await q.read("w1", [BOT], block=0)
    retried = await q.retry("w1", request)
    assert retried is not None
    assert retried.attempts == 2
    [reclaimed] = await q.reclaim("w1", BOT, min_idle=0)
    assert reclaimed.attempts == 3
    await q.ack(reclaimed)
    assert await q.retry("w1", reclaimed) is None


async def test_dead_letter_moves_the_request_aside(harness: Harness) -> None:
    """A dead-lettered request leaves the inbox and is kept with its reason and attempts."""
    q = harness.queue
    await q.ensure_group(BOT)
    message_id = await enqueue(q, BOT, "doomed")
    [request] = await q.read("w1", [BOT], block=0)
    await q.dead_letter(request, "webhook answered HTTP 500")
    assert (await q.backlog(BOT)).waiting == 0
    [letter] = await q.dead_letters(BOT)
    assert (letter.message_id, letter.reason, letter.attempts) == (message_id, "webhook answered HTTP 500", 1)
    assert orjson.loads(letter.frame)["text"] == "doomed"
    assert await q.dead_letters(OTHER) == []


async def test_malformed_entry_is_reported_not_raised(harness: Harness) -> None:
    """An inbox entry that is not a message frame comes back with a problem to dead-letter."""
    q = harness.queue
    await q.ensure_group(BOT)
    await q.enqueue(BOT, "1-1", b"not json")
    [request] = await q.read("w1", [BOT], block=0)
    assert request.problem is not None
    await q.dead_letter(request, request.problem)
    assert len(await q.dead_letters(BOT)) == 1


async def test_read_of_a_deleted_inbox_raises_group_missing(harness: Harness) -> None:
    """Reading a bot whose inbox was deleted raises GroupMissing until the group is made again."""
    q = harness.queue
    await q.ensure_group(BOT)
    await harness.drop_inbox(BOT)
    with pytest.raises(GroupMissing):
        await q.read("w1", [BOT], block=0)
    assert await q.pending(BOT) == 0
    await q.ensure_group(BOT)
    assert await q.read("w1", [BOT], block=0) == []


async def test_answered_tells_whether_a_reply_exists(harness: Harness) -> None:
    """answered() sees the reply marker history keeps per request."""
    q = harness.queue
    assert not await q.answered(BOT, "5-1")
    await harness.mark_answered(BOT, "5-1")
    assert await q.answered(BOT, "5-1")


async def test_lease_has_one_owner_at_a_time(harness: Harness) -> None:
    """Only the holder renews or releases a lease; another worker may claim it after release."""
    q, peer = harness.broker.leases, harness.peer_broker.leases
    assert await q.claim(BOT, "w1", 30)
    assert await q.claim(BOT, "w1", 30)
    assert not await peer.claim(BOT, "w2", 30)
    assert not await peer.renew(BOT, "w2", 30)
    assert not await peer.release(BOT, "w2")
    assert await q.owner(BOT) == "w1"
    assert await q.renew(BOT, "w1", 30)
    assert await q.release(BOT, "w1")
    assert await q.owner(BOT) is None
    assert not await q.renew(BOT, "w1", 30)
    assert await peer.claim(BOT, "w2", 30)


async def test_lease_expires_without_renewal(harness: Harness) -> None:
    """A lease that is not renewed lapses and another worker takes it."""
    q, peer = harness.broker.leases, harness.peer_broker.leases
    assert await q.claim(BOT, "w1", 0.2)

    async def lapsed() -> bool:
        return await peer.owner(BOT) is None

    await until(lapsed, "the lease to expire")
    assert await peer.claim(BOT, "w2", 30)
    assert not await q.renew(BOT, "w1", 30)


async def test_heartbeat_counts_live_workers(harness: Harness) -> None:
    """Heartbeats count the live workers; leaving or going silent removes one."""
    q, peer = harness.broker.workers, harness.peer_broker.workers
    assert await q.heartbeat("w1", 30) == 1
    assert await peer.heartbeat("w2", 0.2) == 2
    assert await q.heartbeat("w1", 30) == 2

    async def one_left() -> bool:
        return await q.heartbeat("w1", 30) == 1

    await until(one_left, "the silent worker to expire")
    await peer.heartbeat("w2", 30)
    await peer.leave("w2")
    assert await q.heartbeat("w1", 30) == 1


async def test_bots_changed_notice_reaches_other_workers(harness: Harness) -> None:
    """A notice about the running bots wakes a waiting worker; without one the wait times out."""
    q, peer = harness.broker.workers, harness.peer_broker.workers
    assert not await q.wait_bots_changed(0.05)
    waiting = asyncio.ensure_future(q.wait_bots_changed(scaled(10)))
    await peer.notify_bots_changed()
    assert await asyncio.wait_for(waiting, scaled(5)) in (True, False)
    await peer.notify_bots_changed()
    assert await q.wait_bots_changed(scaled(5))
