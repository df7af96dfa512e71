"""The connection to Redis: the client for a URL, one pipelining writer, Lua scripts.

Every command a node sends in the hot path goes through :class:`CommandPipe`: callers enqueue
and await a future, and one task sends whatever is queued as one pipeline. That keeps the number
of connections fixed (redis-py's asyncio pool raises once more than its limit of commands is in
flight), preserves the order of appends, and turns N round trips into one under load.

Three deployments share this code: one Redis (``redis://``, ``rediss://``, ``unix://``), Redis
Cluster (``redis+cluster://host:port[,host:port...]``) and Sentinel
(``redis+sentinel://host:port[,host:port...]/master-name[/db]``). Pub/sub lives in
:mod:`shared.broker.redis_pubsub`, and what differs between the three in
:mod:`shared.broker.redis_topology`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.connection import parse_url as parse_plain_url
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from shared.broker.base import BrokerUnavailable

log = logging.getLogger(__name__)
MAX_BATCH = 512
CONNECT_TIMEOUT = 5.0
SCHEMES = {
    "redis": "single",
    "rediss": "single",
    "unix": "single",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}
DEFAULT_PORTS = {"single": 6379, "cluster": 6379, "sentinel": 26379}

Client = aioredis.Redis | RedisCluster
# what a lost or refusing Redis raises; redis-py's cluster routing errors are not RedisErrors
LINK_ERRORS = (RedisError, RedisClusterException, OSError)


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is and how to log in, read from a URL without any I/O."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str = field(repr=False)  # as given: redis-py reads single-server URLs itself
    nodes: tuple[tuple[str, int], ...] = ()  # cluster seed nodes, or the sentinels
    service: str = ""  # the master's name in Sentinel
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False

    def connection_options(self) -> dict[str, Any]:
        """Options of a connection to one Redis server of this deployment (not to a sentinel)."""
        return {
            "username": self.username,
            "password": self.password,
            "socket_keepalive": True,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "health_check_interval": 15,
        }

    def node_pool(self, host: str, port: int) -> aioredis.ConnectionPool:
        """A pool of connections to one cluster node, for the pub/sub connections held open to it."""
        connection_class = SSLConnection if self.tls else Connection
        return aioredis.ConnectionPool(
            host=host, port=port, connection_class=connection_class, **self.connection_options()
        )


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:7000
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"no host in {text!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, int(port_text)


def parse_redis_url(url: str) -> RedisTarget:
    """Read a Redis URL; raises ValueError saying what is wrong with it. Does no I/O."""
    parts = urlsplit(url)
    kind = SCHEMES.get(parts.scheme)
    if kind is None:
        raise ValueError(f"unsupported scheme {parts.scheme!r}: expected one of {', '.join(SCHEMES)}")
    if kind == "single":
        parse_plain_url(url)  # raises ValueError for a bad port or option
        if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"the path must be a database number, not {parts.path!r}")
        return RedisTarget(kind, url)
    if parts.query or parts.fragment:
        raise ValueError("query options are not supported in cluster and sentinel URLs")
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = tuple(_host_port(h.strip(), DEFAULT_PORTS[kind]) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ValueError("no host given")
    path = [unquote(p) for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == "cluster" and path not in ([], ["0"]):
        raise ValueError("Redis Cluster has only database 0")
    if kind == "sentinel":
        if not 1 <= len(path) <= 2:
            raise ValueError("expected redis+sentinel://host:port[,host:port...]/master-name[/db]")
        service = path[0]
        if len(path) == 2:
            if not path[1].isdigit():
                raise ValueError(f"the database must be a number, not {path[1]!r}")
            db = int(path[1])
    return RedisTarget(
        kind,
        url,
        nodes,
        service,
        db,
        unquote(username) or None,
        unquote(password) or None,
        parts.scheme.startswith("rediss"),
    )


class Script:
    """A Lua script from ``shared/broker/lua`` run by SHA, sent in full when a server lacks it."""

    def __init__(self, name: str) -> None:
        self.source = resources.files("shared.broker").joinpath("lua", f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()


class CommandPipe:
    """One writer task that sends every queued command in one pipeline per round trip.

    On a cluster the pipeline is split by node and each command goes to the node owning its
    keys; commands of one call never span slots (every key of a room shares its hash tag).
    """

    def __init__(self, client: Client) -> None:
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
        pipe = self.client.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        started = time.perf_counter()
        try:
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
