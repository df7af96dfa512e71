"""Every use of redis-py beyond its documented API, in one place, each with the reason for it.

redis-py is bounded below the next major version in ``pyproject.toml``; when raising that bound,
check each item here against the new version (the contract, cluster and Sentinel suites exercise
all of them). The rest of the broker uses only the public client, pipeline and pub/sub API.

1. :class:`ReportingPubSub` overrides ``PubSub.connect`` and ``PubSub.on_connect``: redis-py
   reconnects and resubscribes a pub/sub connection by itself and tells nobody, but events
   published meanwhile are lost, so the gateway must hear of it to refill its rooms from history.
2. It also overrides the private ``PubSub._resubscribe_shard_channels``: redis-py resubscribes
   every shard channel in one SSUBSCRIBE, which a cluster node refuses (CROSSSLOT) once the
   channels span slots; we send one SSUBSCRIBE per slot.
3. :func:`tracked_channels` / :func:`forget_channel` read and change ``PubSub.channels`` and
   ``PubSub.shard_channels``, the dicts redis-py resubscribes from: a channel whose slot moved to
   another node must not be subscribed again on the old one after a reconnect.
4. :func:`drop_connection` disconnects ``PubSub.connection``: a read loop that died may have
   left a reply half read, and only a fresh connection (resubscribed by redis-py) is safe.
5. :class:`HeldConnection` sends on the ``connection`` of a single-connection client with
   ``pack_command``/``send_packed_command``/``read_response``: a worker's blocking XREADGROUP is
   one command repeated with the same arguments, packed once, and must not go through the
   client's retry wrapper (which would resend a read that may already have taken entries).
6. :func:`refresh_slots` calls ``RedisCluster.nodes_manager.initialize()``: the public client
   reads the slot map again only when a command gets MOVED, but pub/sub learns of a moved slot
   from an SUNSUBSCRIBE or a dead link, and must find the new owner before anything is sent.
7. :func:`sentinel_connections` reads ``SentinelConnectionPool.sentinel_manager.sentinels``:
   closing the master's client leaves the connections to the sentinels open.
9. :class:`BatchConnection` holds one connection of a (non-cluster) client's pool for the command
   pipe, takes over its transport (``Connection._writer``) once redis-py has connected it, and
   reads the replies with a :class:`~shared.broker.reply_link.ReplyLink`, which turns Redis's
   error replies into redis-py's exceptions with its hiredis parser's ``parse_error``: redis-py's
   pipeline object, retry wrapper, response callbacks, pool checkout and per-reply coroutines
   cost more per round trip than the commands themselves. Replies come as Redis sends them (no
   callbacks); the broker reads every reply shape either way.
8. :func:`next_event` reads a connected pub/sub connection's replies straight from its hiredis
   parser (``Connection._parser``: its ``_reader``, ``read_from_socket`` and ``NOT_ENOUGH_DATA``)
   and hands only replies that are not room events to ``PubSub.handle_message``. Through
   ``PubSub.parse_response`` every event costs a health check, the retry wrapper, a timeout
   context, a logger lookup and a debug call, then a dict and an observability hook: a large
   share of a node's time in small rooms, which events need none of. A link error disconnects
   the connection; the next read takes ``parse_response``, which reconnects and resubscribes.

It also gives types to the few public calls redis-py leaves unannotated (:func:`close_pubsub`,
:func:`sentinel_master`), so that ``mypy --strict`` checks their callers.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from hiredis import pack_command
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser as _HiredisParser
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, RedisError, SlotNotCoveredError

from shared.broker.reply_link import ReplyLink


class ReportingPubSub(PubSub):
    """redis-py's PubSub that reports reconnections and resubscribes shard channels slot by slot."""

    def __init__(self, pool: ConnectionPool, *, on_reconnect: Callable[[], None]) -> None:
        super().__init__(pool)
        self._on_reconnect = on_reconnect
        self._had_connection = False  # on_connect of the first connection is no reconnection

    async def connect(self) -> None:
        await super().connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self._had_connection = True

    async def on_connect(self, connection: Connection) -> None:
        await super().on_connect(connection)  # resubscribes every channel still tracked
        if self._had_connection:
            self._on_reconnect()

    async def _resubscribe_shard_channels(self) -> None:
        for channels in by_slot([self.encoder.encode(channel) for channel in self.shard_channels]):
            await self.execute_command("SSUBSCRIBE", *channels)


def by_slot(channels: Sequence[bytes]) -> list[list[bytes]]:
    """``channels`` grouped by cluster slot: one SSUBSCRIBE may only name channels of one slot."""
    groups: dict[int, list[bytes]] = defaultdict(list)
    for channel in channels:
        groups[key_slot(channel)].append(channel)
    return list(groups.values())


def tracked_channels(pubsub: PubSub, *, shard: bool) -> dict[Any, Any]:
    """The channels redis-py holds on ``pubsub`` (and subscribes again after a reconnect)."""
    return pubsub.shard_channels if shard else pubsub.channels


def forget_channel(pubsub: PubSub, channel: bytes, *, shard: bool) -> None:
    """Stop redis-py from subscribing ``channel`` again on this connection."""
    tracked_channels(pubsub, shard=shard).pop(channel, None)


async def drop_connection(pubsub: PubSub) -> None:
    """Disconnect the pub/sub connection; the next read reconnects and resubscribes."""
    connection = pubsub.connection
    if connection is not None:
        await connection.disconnect()


async def close_pubsub(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # unannotated in redis-py


class HeldConnection:
    """One connection of a client's pool, held for a blocking command that is sent as packed bytes."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client.client()  # a single-connection client: its connection stays ours

    async def client_id(self) -> int:
        """The connection's CLIENT ID (for CLIENT UNBLOCK); connects it if needed."""
        return int(await self._client.client_id())

    def _connection(self) -> Connection:
        connection = self._client.connection
        if connection is None:  # client_id() connects it; a caller that skipped it gets a link error
            raise RedisConnectionError("the held connection is not connected")
        return connection

    def pack(self, *args: Any) -> list[bytes]:
        return self._connection().pack_command(*args)

    async def send(self, packed: list[bytes]) -> Any:
        """Send ``packed`` and return its reply."""
        connection = self._connection()
        await connection.send_packed_command(packed, check_health=False)
        return await connection.read_response()

    async def close(self) -> None:
        await self._client.aclose()


def node_for(cluster: RedisCluster, channel: bytes) -> ClusterNode:
    """The primary that serves ``channel``'s slot now; raises SlotNotCoveredError when none does."""
    # keyslot() takes bytes as they are (and encodes a str): the annotation is narrower than the code
    node = cluster.get_node_from_key(cast(str, channel))
    if node is None:  # only for replica=True, which we never ask for
        raise SlotNotCoveredError(f"no node serves {channel!r}")
    return node


async def refresh_slots(cluster: RedisCluster) -> None:
    """Read the cluster's slot map again, now."""
    await cluster.nodes_manager.initialize()


def sentinel_master(
    sentinels: Sequence[tuple[str, int]],
    sentinel_options: dict[str, Any],
    service: str,
    options: dict[str, Any],
) -> aioredis.Redis:
    """The client of the master that the sentinels name ``service``."""
    sentinel = Sentinel(list(sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    # master_for is annotated to return Any; it builds redis_class, aioredis.Redis by default
    return cast(aioredis.Redis, sentinel.master_for(service, **options))


def sentinel_connections(client: aioredis.Redis) -> list[aioredis.Redis]:
    """The clients of the sentinels behind a client from :func:`sentinel_master` (none for others)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool):
        return []
    return list(pool.sentinel_manager.sentinels)


PubSubEvent = tuple[bytes, bytes]  # (channel, data) of a published message


async def next_event(pubsub: PubSub) -> PubSubEvent | dict[str, Any] | None:
    """The next reply of a subscribed connection: a room event as (channel, data), anything else
    (confirmations, pongs) as redis-py's message dict after its own bookkeeping, or None."""
    connection = pubsub.connection
    parser = connection._parser if connection is not None else None
    if connection is None or not isinstance(parser, _HiredisParser) or not connection.is_connected:
        response = await pubsub.parse_response(block=True)  # connects (again) first, and resubscribes
    else:
        response = await _read_reply(connection, parser)
    if isinstance(response, list) and len(response) == 3 and response[0] in (b"message", b"smessage"):
        return response[1], response[2]
    handled = await pubsub.handle_message(response)  # type: ignore[no-untyped-call]  # unannotated in redis-py
    return cast("dict[str, Any] | None", handled)


async def _read_reply(connection: Connection, parser: _HiredisParser) -> Any:
    reader = parser._reader
    if reader is None:  # not connected after all: the next read reconnects
        raise RedisConnectionError("the pub/sub connection is closed")
    try:
        response = reader.gets()
        while response is NOT_ENOUGH_DATA:
            await parser.read_from_socket()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            response = reader.gets()
    except (RedisError, OSError):
        await connection.disconnect()  # a reply may be half read: the next read reconnects
        raise
    if isinstance(response, Exception):  # an error reply (MOVED, a refused command) or a broken stream
        if isinstance(response, RedisConnectionError):
            await connection.disconnect()
        raise response
    return response


class BatchConnection:
    """The command pipe's own connection on a single server or Sentinel master (see item 9)."""

    def __init__(self, client: aioredis.Redis, preamble: Callable[[], Sequence[tuple[Any, ...]]]) -> None:
        self._pool = client.connection_pool
        self._preamble = preamble  # commands sent first on every new connection
        self._connection: Connection | None = None
        self._link: ReplyLink | None = None

    async def send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Each command's reply, or the ResponseError Redis answered it with, in order.

        A link that failed is replaced and the batch sent once more, as redis-py's pipeline does
        (a held connection may point at a server that is gone: a Sentinel's old master, say);
        when the second try fails too, this raises with the connection dropped.
        """
        try:
            return await self._send(commands)
        except (RedisConnectionError, TimeoutError, OSError):
            return await self._send(commands)

    async def _send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        link = self._link
        if link is None or not link.usable:
            link = await self._connect()
        try:
            return await link.send(b"".join(pack_command(c) for c in commands), len(commands))
        except BaseException:
            # lost, or a reply may be half read: this connection is out of step for good
            await self._drop()
            raise

    async def _connect(self) -> ReplyLink:
        await self._drop()
        got = await self._pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        connection = self._connection = cast(Connection, got)
        writer = connection._writer
        if writer is None:  # get_connection() connects: a pool that did not is a link error
            raise RedisConnectionError("the pipe's connection did not connect")
        transport = cast(asyncio.Transport, writer.transport)
        link = self._link = ReplyLink(transport, _HiredisParser.parse_error, InvalidResponse)
        preamble = self._preamble()
        try:
            for reply in await link.send(b"".join(pack_command(c) for c in preamble), len(preamble)):
                if isinstance(reply, Exception):
                    raise reply
        except BaseException:
            await self._drop()
            raise
        return link

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        link, self._link = self._link, None
        if link is not None:
            link.close()
        if connection is not None:
            await connection.disconnect()
            await self._pool.release(connection)

    async def close(self) -> None:
        await self._drop()
