"""The command pipe's connection, whose replies hiredis reads as they arrive, against a real Redis.

Replies must match their commands in order whatever the reads cut them into, Redis's errors must
be redis-py's exceptions (the pipe resends a script on NoScriptError), and a connection that dies
with replies owed must fail them and be replaced, never answer one batch with another's replies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, ResponseError

from shared.broker.redis_compat import BatchConnection
from shared.broker.redis_history import APPEND
from shared.broker.redis_link import SCRIPTS, load_scripts
from tests.procs import scaled


@pytest.fixture
async def batches(redis_url: str) -> AsyncIterator[BatchConnection]:
    client = aioredis.Redis.from_url(redis_url)
    connection = BatchConnection(client, load_scripts)
    yield connection
    await connection.close()
    await client.aclose()


async def test_replies_come_back_in_order_with_errors_in_their_place(
    batches: BatchConnection, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:k"
    replies = await batches.send(
        [
            ("SET", key, "v"),
            ("EVALSHA", "0" * 40, 0),
            ("GET", key),
            ("INCR", key),  # not a number: an error reply, and the next reply still follows
            ("DEL", key),
        ]
    )
    assert replies[0] == b"OK"  # as Redis sends it: the pipe applies no response callbacks
    assert isinstance(replies[1], NoScriptError)
    assert replies[2] == b"v"
    assert isinstance(replies[3], ResponseError)
    assert "not an integer" in str(replies[3])
    assert replies[4] == 1


async def test_large_replies_split_over_many_reads_are_whole(batches: BatchConnection, redis_prefix: str) -> None:
    key = f"{redis_prefix}:big"
    value = bytes(range(256)) * 8192  # 2 MiB: many socket reads
    await batches.send([("SET", key, value)])
    many = await asyncio.gather(*(batches.send([("GET", key), ("STRLEN", key)]) for _ in range(3)))
    assert all(replies == [value, len(value)] for replies in many)


async def test_a_killed_connection_is_replaced_and_the_batch_sent_again(
    batches: BatchConnection, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:n"
    assert await batches.send([("INCR", key)]) == [1]
    killed = sync_redis.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    # the first try finds the link dead; the second, on a new connection, is the only one that ran
    assert await asyncio.wait_for(batches.send([("INCR", key)]), scaled(5)) == [2]


async def test_replies_owed_when_the_connection_dies_fail_and_nothing_mixes_up(
    batches: BatchConnection, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    key = f"{redis_prefix}:slow"
    assert await batches.send([("SET", key, "1")]) == [b"OK"]
    # a reply that takes a while, cut off by the server: the batch fails, twice, with a link error
    slow = asyncio.ensure_future(batches.send([("BLPOP", f"{redis_prefix}:never", 10)]))
    await asyncio.sleep(0)
    for _ in range(2):
        await _kill_blocked(sync_redis)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(slow, scaled(5))
    # the next batch gets its own replies on a fresh connection
    assert await batches.send([("GET", key)]) == [b"1"]


async def _kill_blocked(sync_redis: redis.Redis) -> None:
    """Kill the connection blocked in BLPOP, once it is."""
    for _ in range(200):  # bounded: the BLPOP reaches Redis within milliseconds
        blocked = [c for c in sync_redis.client_list() if c.get("cmd") == "blpop"]
        if blocked:
            sync_redis.client_kill_filter(_id=blocked[0]["id"])
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no connection blocked in BLPOP")


async def test_every_script_is_loaded_on_each_new_connection(batches: BatchConnection, sync_redis: redis.Redis) -> None:
    """So that a first EVALSHA on a fresh or restarted server never falls back to an EVAL sent
    behind commands queued meanwhile (which would reorder what a bot publishes)."""
    assert APPEND in SCRIPTS
    await batches.send([("PING",)])
    assert sync_redis.script_exists(*(script.sha for script in SCRIPTS)) == [True] * len(SCRIPTS)
    sync_redis.script_flush()
    sync_redis.client_kill_filter(_type="normal", skipme=True)
    (reply,) = await batches.send([("EVALSHA", APPEND.sha, 0)])  # run (and failing on no keys), not NOSCRIPT
    assert not isinstance(reply, NoScriptError)
    assert sync_redis.script_exists(APPEND.sha) == [True]
