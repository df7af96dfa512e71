"""Many rooms subscribed at once (a reconnect storm): every one confirmed and delivering, in few commands."""

from __future__ import annotations

import asyncio

import pytest
import redis

from shared.broker.base import BrokerUnavailable
from shared.broker.redis_link import CommandPipe
from tests.broker.conftest import MakeNodes, ephemeral, redis_info

ROOMS = [f"r{i}" for i in range(50)]


async def test_rooms_subscribed_together_all_deliver(make_nodes: MakeNodes) -> None:
    listener, publisher = make_nodes(2)
    await asyncio.gather(*(listener.fanout.subscribe(room) for room in ROOMS))
    for room in ROOMS:
        await publisher.fanout.publish(room, ephemeral(room))
    got = sorted([(await listener.next_event()).room for _ in ROOMS])
    assert got == sorted(ROOMS)


@pytest.mark.parametrize("backend", ["redis"])
async def test_rooms_subscribed_in_one_turn_take_one_subscribe(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    pipe = node.broker.pipe
    assert isinstance(pipe, CommandPipe)
    await node.fanout.subscribe("first")  # the connection is open and read from now on
    await pipe.execute("CONFIG", "RESETSTAT")
    await asyncio.gather(*(node.fanout.subscribe(room) for room in ROOMS))
    stats = await redis_info(pipe, "commandstats")
    assert stats["cmdstat_subscribe"]["calls"] == "1"  # one command for the fifty rooms


@pytest.mark.parametrize("backend", ["redis"])
async def test_a_batch_that_cannot_be_sent_fails_every_caller(make_nodes: MakeNodes) -> None:
    (node,) = make_nodes(1)
    await node.fanout.subscribe("first")
    link = next(iter(node.fanout._subscriber._links.values()))  # type: ignore[attr-defined]

    async def refused(channels: list[bytes]) -> None:
        raise redis.exceptions.ConnectionError("the link is down")

    link._send_subscribe = refused
    results = await asyncio.gather(*(node.fanout.subscribe(room) for room in ROOMS[:5]), return_exceptions=True)
    assert all(isinstance(result, BrokerUnavailable) for result in results), results
    assert node.fanout.subscriptions() == 1  # none of the five is taken for subscribed
