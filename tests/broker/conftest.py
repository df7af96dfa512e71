"""Broker nodes for the contract suite, built over memory or a private Redis.

Every test that asks for ``make_nodes`` runs once per implementation. ``make_nodes(n, **settings)``
builds ``n`` nodes on one shared store: one ``MemoryStore`` for memory, one key prefix (and one
client, pipe and pub/sub connection per node) for Redis. The fixture closes every node it built.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import packets
from shared.broker.base import BotRegistry, FanOut, History, Presence
from shared.keys import Keys
from shared.settings import Settings
from tests.procs import TEST_SECRET, scaled

TIMEOUT = scaled(5)


@dataclass
class Event:
    """One packet a node's handler got, split as nodes read it."""

    room: str
    message_id: str
    excluded: str
    frame: bytes


@dataclass
class Node:
    """One process's view of the shared state, with the events its fan-out handler received."""

    kind: str
    settings: Settings
    fanout: FanOut
    history: History
    presence: Presence
    registry: BotRegistry
    pipe: Any = None  # the Redis CommandPipe, for tests that look at Redis itself
    keys: Keys | None = None
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fanout.set_handler(self._handle)

    def _handle(self, room: str, packet: bytes) -> None:
        self.events.put_nowait(Event(room, *packets.unpack(packet)))

    async def next_event(self) -> Event:
        """The next event this node received; fails the test when none comes in time."""
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def close(self) -> None:
        for close in self.closers:
            await close()


MakeNodes = Callable[..., list[Node]]


def _memory_builder() -> Callable[[int, dict[str, Any]], list[Node]]:
    from shared.broker.memory import MemoryBotRegistry, MemoryFanOut, MemoryHistory, MemoryPresence, MemoryStore

    def build(count: int, overrides: dict[str, Any]) -> list[Node]:
        settings = Settings(**overrides)
        store = MemoryStore(settings)
        nodes = []
        for _ in range(count):
            fanout = MemoryFanOut(store)

            async def close(fanout: MemoryFanOut = fanout) -> None:
                fanout.close()

            history, presence, registry = MemoryHistory(store), MemoryPresence(store), MemoryBotRegistry(store)
            nodes.append(Node("memory", settings, fanout, history, presence, registry, closers=[close]))
        return nodes

    return build


def _redis_builder(url: str, prefix: str) -> Callable[[int, dict[str, Any]], list[Node]]:
    from shared.broker.redis import RedisBotRegistry, RedisFanOut, RedisHistory, RedisPresence
    from shared.broker.redis_link import CommandPipe
    from shared.broker.redis_topology import open_topology

    def build(count: int, overrides: dict[str, Any]) -> list[Node]:
        settings = Settings(redis_url=url, jwt_secret=TEST_SECRET, redis_prefix=prefix, **overrides)
        keys = Keys(prefix)
        nodes = []
        for _ in range(count):
            topology = open_topology(url)
            pipe = CommandPipe(topology.client)
            fanout = RedisFanOut(topology, pipe, keys)
            node = Node(
                "redis",
                settings,
                fanout,
                RedisHistory(topology, pipe, keys, settings),
                RedisPresence(pipe, keys, settings),
                RedisBotRegistry(topology, pipe, keys),
                pipe=pipe,
                keys=keys,
                closers=[fanout.close, pipe.close, topology.close],
            )
            nodes.append(node)
        return nodes

    return build


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which implementation the test runs against; Redis-only tests parametrise it to ``redis``."""
    return str(request.param)


@pytest.fixture
async def make_nodes(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeNodes]:
    """A factory of nodes sharing one store; settings overrides are passed as keyword arguments."""
    if backend == "redis":
        build = _redis_builder(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    else:
        build = _memory_builder()
    built: list[Node] = []

    def make(count: int = 1, **overrides: Any) -> list[Node]:
        nodes = build(count, overrides)
        built.extend(nodes)
        return nodes

    yield make
    for node in reversed(built):
        await node.close()
