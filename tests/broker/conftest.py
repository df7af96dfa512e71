"""Broker nodes for the contract suite, built by ``make_broker`` over memory or a private Redis.

Every test that asks for ``make_nodes`` runs once per implementation. ``make_nodes(n, **settings)``
builds ``n`` brokers on one shared state, as processes get them: one ``MemoryStore`` for memory,
one Redis and key prefix (and each broker's own connections) for Redis. The fixture closes every
node it built.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from shared import packets, protocol
from shared.broker import Broker, make_broker
from shared.broker.base import BotRegistry, FanOut, History, Presence, Revocations
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
    """One process's broker, built by ``make_broker``, with the events its fan-out handler received."""

    kind: str
    settings: Settings
    broker: Broker
    keys: Keys
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)

    def __post_init__(self) -> None:
        self.broker.fanout.set_handler(self._handle)

    @property
    def fanout(self) -> FanOut:
        return self.broker.fanout

    @property
    def history(self) -> History:
        return self.broker.history

    @property
    def presence(self) -> Presence:
        return self.broker.presence

    @property
    def registry(self) -> BotRegistry:
        return self.broker.registry

    @property
    def revocations(self) -> Revocations:
        return self.broker.revocations

    @property
    def pipe(self) -> Any:
        """The Redis CommandPipe, for tests that look at Redis itself (None on memory)."""
        return self.broker.pipe

    def _handle(self, room: str, packet: bytes) -> None:
        header = packets.unpack(packet)
        self.events.put_nowait(Event(room, header.message_id, header.exclude_user, header.frame))

    async def next_event(self) -> Event:
        """The next event this node received; fails the test when none comes in time."""
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def close(self) -> None:
        await self.broker.close()


MakeNodes = Callable[..., list[Node]]


def ephemeral(text: str) -> bytes:
    """A packet of an event history does not keep (a typing frame), carrying ``text``."""
    return packets.pack(protocol.encode({"type": "typing", "text": text}))


def build_nodes(kind: str, count: int, settings: Settings) -> list[Node]:
    """``count`` brokers on one shared state: one store in memory, one Redis (and key prefix) otherwise."""
    brokers = [make_broker(settings)]
    brokers += [make_broker(settings, store=brokers[0].store) for _ in range(count - 1)]
    return [Node(kind, settings, broker, Keys(settings.redis_prefix)) for broker in brokers]


def node_settings(kind: str, request: pytest.FixtureRequest, **overrides: Any) -> Settings:
    """Settings of a test's nodes: no Redis URL for memory, the test's Redis and key prefix otherwise."""
    if kind == "memory":
        return Settings(**overrides)
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return Settings(redis_url=url, jwt_secret=TEST_SECRET, redis_prefix=prefix, **overrides)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which implementation the test runs against; Redis-only tests parametrise it to ``redis``."""
    return str(request.param)


@pytest.fixture
async def make_nodes(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[MakeNodes]:
    """A factory of nodes sharing one store; settings overrides are passed as keyword arguments."""
    built: list[Node] = []

    def make(count: int = 1, **overrides: Any) -> list[Node]:
        nodes = build_nodes(backend, count, node_settings(backend, request, **overrides))
        built.extend(nodes)
        return nodes

    yield make
    for node in reversed(built):
        await node.close()


async def redis_info(pipe: Any, section: str) -> dict[str, Any]:
    """``INFO section`` through a node's command pipe, parsed (the pipe returns Redis's text as is).

    ``key:value`` lines map to strings; ``cmdstat_x:calls=1,usec=2`` lines to dicts of them.
    """
    raw = await pipe.execute("INFO", section)
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    parsed: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or line.startswith("#"):
            continue
        if "=" in value and key.startswith("cmdstat_"):
            parsed[key] = dict(part.split("=", 1) for part in value.split(","))
        else:
            parsed[key] = value
    return parsed
