"""The broker: shared state behind narrow interfaces, in memory or in Redis.

``make_broker(settings)`` picks the in-memory store when no Redis URL is set (one process runs
gateway and workers) and Redis otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.broker.base import (
    Appended,
    BotRegistry,
    BrokerUnavailable,
    FanOut,
    History,
    HistoryPage,
    InboxFull,
    Presence,
    PresenceChange,
    Replies,
    RequestInfo,
    Revocations,
)
from shared.broker.queue import BotLeases, BotQueue, WorkerRoster
from shared.settings import Settings

__all__ = [
    "Appended",
    "BotRegistry",
    "Broker",
    "BrokerUnavailable",
    "FanOut",
    "History",
    "HistoryPage",
    "InboxFull",
    "Presence",
    "PresenceChange",
    "Replies",
    "RequestInfo",
    "make_broker",
]


@dataclass
class Broker:
    """Every interface of one process's connection to the shared state."""

    kind: str  # "memory" or "redis"
    fanout: FanOut
    history: History
    presence: Presence
    registry: BotRegistry
    revocations: Revocations
    queue: BotQueue  # the bots' inboxes
    leases: BotLeases  # which worker serves which bot
    workers: WorkerRoster  # live workers, and the "bots changed" notice
    replies: Replies  # bot replies while they are written, and cancels
    ping: Callable[[], Awaitable[None]]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    store: Any = None  # the MemoryStore, for nodes sharing one process
    pipe: Any = None  # the Redis CommandPipe, whose ``observer`` feeds Redis latency metrics

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


def make_broker(settings: Settings, *, store: Any = None) -> Broker:
    """Build the broker for ``settings``; ``store`` lets several in-process nodes share memory."""
    if settings.redis_url is None:
        return _memory_broker(settings, store)
    return _redis_broker(settings)


def _memory_broker(settings: Settings, store: Any) -> Broker:
    from shared.broker.memory import MemoryBotRegistry, MemoryFanOut, MemoryPresence, MemoryRevocations, MemoryStore
    from shared.broker.memory_history import MemoryHistory
    from shared.broker.memory_queue import MemoryBotQueue
    from shared.broker.memory_streams import MemoryReplies
    from shared.broker.memory_workers import MemoryBotLeases, MemoryWorkerRoster

    store = store or MemoryStore(settings)
    fanout = MemoryFanOut(store)

    async def ping() -> None:
        return None

    queue = MemoryBotQueue(store, settings)
    workers = MemoryWorkerRoster(store)

    async def close() -> None:
        await workers.close()
        await queue.close()
        fanout.close()

    return Broker(
        kind="memory",
        fanout=fanout,
        history=MemoryHistory(store),
        presence=MemoryPresence(store),
        registry=MemoryBotRegistry(store),
        revocations=MemoryRevocations(store),
        queue=queue,
        leases=MemoryBotLeases(store),
        workers=workers,
        replies=MemoryReplies(store),
        ping=ping,
        closers=[close],
        store=store,
    )


def _redis_broker(settings: Settings) -> Broker:
    from shared.broker.redis import RedisBotRegistry, RedisFanOut, RedisPresence, RedisRevocations
    from shared.broker.redis_history import RedisHistory
    from shared.broker.redis_link import LINK_ERRORS, CommandPipe
    from shared.broker.redis_queue import RedisBotQueue
    from shared.broker.redis_streams import RedisReplies
    from shared.broker.redis_topology import open_topology
    from shared.broker.redis_workers import RedisBotLeases, RedisWorkerRoster
    from shared.keys import Keys

    assert settings.redis_url is not None
    topology = open_topology(settings.redis_url)
    pipe = CommandPipe(topology.client)
    keys = Keys(settings.redis_prefix)
    fanout = RedisFanOut(topology, pipe, keys)
    queue = RedisBotQueue(topology, pipe, keys, settings)
    workers = RedisWorkerRoster(topology, pipe, keys)

    async def ping() -> None:
        try:
            await pipe.execute("PING")
        except LINK_ERRORS as exc:
            raise BrokerUnavailable(str(exc)) from exc

    return Broker(
        kind="redis",
        fanout=fanout,
        history=RedisHistory(topology, pipe, keys, settings),
        presence=RedisPresence(pipe, keys, settings),
        registry=RedisBotRegistry(topology, pipe, keys),
        revocations=RedisRevocations(pipe, keys),
        queue=queue,
        leases=RedisBotLeases(pipe, keys),
        workers=workers,
        replies=RedisReplies(topology, pipe, keys, settings, workers),
        ping=ping,
        closers=[topology.close, pipe.close, fanout.close, queue.close, workers.close],
        pipe=pipe,
    )
