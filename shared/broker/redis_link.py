"""The connection to Redis: connection options, one pipelining writer, Lua scripts.

Every command a node sends in the hot path goes through :class:`CommandPipe`: callers enqueue
and await a future, and one task sends whatever is queued as one pipeline. That keeps the number
of connections fixed (redis-py's asyncio pool raises once more than its limit of commands is in
flight), preserves the order of appends, and turns N round trips into one under load.

Three deployments share this code: one Redis, Redis Cluster and Sentinel, named by URLs that
:mod:`shared.redis_url` reads. Pub/sub lives in :mod:`shared.broker.redis_pubsub`, and what
differs between the three deployments in :mod:`shared.broker.redis_topology`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from shared.broker.base import BrokerUnavailable
from shared.broker.redis_compat import BatchConnection
from shared.redis_url import RedisTarget

log = logging.getLogger(__name__)
MAX_BATCH = 512
CONNECT_TIMEOUT = 5.0
Client = aioredis.Redis | RedisCluster
# what a lost or refusing Redis raises; redis-py's cluster routing errors are not RedisErrors
LINK_ERRORS = (RedisError, RedisClusterException, OSError)


def connection_options(target: RedisTarget) -> dict[str, Any]:
    """Options of a connection to one Redis server of ``target`` (not to a sentinel)."""
    return {
        "username": target.username,
        "password": target.password,
        "socket_keepalive": True,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 15,
    }


def node_pool(target: RedisTarget, host: str, port: int) -> aioredis.ConnectionPool:
    """A pool of connections to one cluster node, for the pub/sub connections held open to it."""
    connection_class = SSLConnection if target.tls else Connection
    return aioredis.ConnectionPool(
        host=host, port=port, connection_class=connection_class, **connection_options(target)
    )


class Script:
    """A Lua script from ``shared/broker/lua`` run by SHA, sent in full when a server lacks it."""

    def __init__(self, name: str) -> None:
        self.source = resources.files("shared.broker").joinpath("lua", f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()
        SCRIPTS.append(self)


# Every script, loaded on each new connection of the pipe before anything else is sent on it. A
# server that lacks a script answers its EVALSHA with NOSCRIPT, and the EVAL sent after that goes
# out behind commands queued meanwhile: on a fresh or restarted server the first request's
# "processing" would reach the room after the bot's "thinking". Loading first keeps the order.
SCRIPTS: list[Script] = []


def load_scripts() -> list[tuple[Any, ...]]:
    return [("SCRIPT", "LOAD", script.source) for script in SCRIPTS]


class CommandPipe:
    """One writer task that sends every queued command in one pipeline per round trip.

    On a single server (or a Sentinel's master) a batch goes out on the pipe's own connection, in
    one write (see ``BatchConnection``). On a cluster it is redis-py's pipeline, split by node so
    each command goes to the node owning its keys; commands of one call never span slots (every
    key of a room shares its hash tag).
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        # on a cluster, scripts are cached node by node on first use (EVALSHA, then EVAL)
        self._batches = None if isinstance(client, RedisCluster) else BatchConnection(client, load_scripts)
        self._queue: deque[tuple[tuple[Any, ...], asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # called after each round trip with (seconds, commands, failed commands): metrics hook
        self.observer: Callable[[float, int, int], None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-pipe")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._batches is not None:
            with contextlib.suppress(*LINK_ERRORS):
                await self._batches.close()
        while self._queue:
            _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(BrokerUnavailable("the Redis link is closed"))

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply or the Redis error."""
        if self._task is None:
            self.start()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, future))
        self._wake.set()
        return future

    async def execute(self, *args: Any) -> Any:
        return await self.call(*args)

    async def script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script; a server that does not know it (restarted, or another cluster node) gets the source.

        EVAL goes to the same node as the EVALSHA (it has the same keys) and caches the script there.
        """
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.source, len(keys), *keys, *args)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._send(batch)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        started = time.perf_counter()
        try:
            if self._batches is not None:
                replies = await self._batches.send([args for args, _ in batch])
            else:
                pipe = self.client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the writer must outlive any failure, or every later caller would hang
            if isinstance(exc, LINK_ERRORS):
                log.warning("redis pipeline failed: %s", exc)
            else:
                log.exception("redis pipeline failed unexpectedly")
            self._observe(started, len(batch), len(batch))
            error = BrokerUnavailable(f"Redis is unreachable: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        failed = 0
        for (_, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception) and not isinstance(reply, NoScriptError):
                failed += 1  # a script Redis does not know yet is sent again in full: not an error
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        self._observe(started, len(batch), failed)

    def _observe(self, started: float, commands: int, failed: int) -> None:
        if self.observer is not None:
            self.observer(time.perf_counter() - started, commands, failed)
