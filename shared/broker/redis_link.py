"""The connection to Redis: one client per process, one pipelining writer, Lua scripts.

Every command a node sends in the hot path goes through :class:`CommandPipe`: callers enqueue
and await a future, and one task sends whatever is queued as one pipeline. That keeps the number
of connections fixed (redis-py's asyncio pool raises once more than its limit of commands is in
flight), preserves the order of appends, and turns N round trips into one under load.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from shared.broker.base import BrokerUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 512


def connect(url: str, *, max_connections: int = 32) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of raising; ``aclose()`` closes the pool."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=10, health_check_interval=15, socket_keepalive=True
    )
    # from_pool hands the pool to the client: Redis(connection_pool=...) would leave its sockets open on aclose()
    return aioredis.Redis.from_pool(pool)


class Script:
    """A Lua script from ``shared/broker/lua`` run by SHA, loaded again after a Redis restart."""

    def __init__(self, name: str) -> None:
        self.source = resources.files("shared.broker").joinpath("lua", f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class CommandPipe:
    """One writer task that sends every queued command in one pipeline per round trip."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
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
        """Run a Lua script, loading it first when Redis does not know it (e.g. after a restart)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.call("SCRIPT", "LOAD", script.source)
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
                await self._send(batch)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        started = time.perf_counter()
        try:
            replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            log.warning("redis pipeline failed: %s", exc)
            self._observe(started, len(batch), len(batch))
            error = BrokerUnavailable(f"Redis is unreachable: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        failed = 0
        for (_, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                failed += 1
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
