"""The shape of a Redis deployment, as one object per kind: single server, Sentinel, Cluster.

The broker's Redis classes never ask which deployment they run on; they ask its topology for
what differs between them:

- ``publish_command``: PUBLISH, or SPUBLISH on a cluster, so that a room's events travel only
  within the shard that owns its slot instead of to every node;
- :meth:`Topology.subscriber`: one pub/sub connection, or one per primary that follows slots;
- :meth:`Topology.inbox_reader`: one blocking XREADGROUP over every inbox, or, on a cluster
  (which refuses one XREADGROUP over several slots), reads on notice;
- ``inbox_notices``: whether a queued request is announced on its inbox's shard channel.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from shared.broker.redis_compat import sentinel_connections, sentinel_master
from shared.broker.redis_link import Client, CommandPipe, connection_options
from shared.broker.redis_pubsub import MessageHandler, Subscriber
from shared.broker.redis_readers import BlockingInboxReader, InboxReader, NoticeInboxReader
from shared.broker.redis_shards import ShardedSubscriber
from shared.keys import Keys
from shared.redis_url import RedisTarget, parse_redis_url

SENTINEL_TIMEOUT = 2.0  # a sentinel that does not answer in time is skipped for the next one


class Topology(ABC):
    """What differs between Redis deployments; the client every command of a process goes through."""

    kind: ClassVar[str]
    publish_command: ClassVar[str] = "PUBLISH"
    inbox_notices: ClassVar[bool] = False

    @property
    @abstractmethod
    def client(self) -> Client: ...

    @abstractmethod
    def subscriber(self, on_message: MessageHandler) -> Subscriber:
        """A new set of pub/sub connections delivering every message of its channels to ``on_message``."""

    @abstractmethod
    def inbox_reader(self, pipe: CommandPipe, keys: Keys, group: str) -> InboxReader:
        """A new reader of bot inboxes for one worker's queue."""

    async def close(self) -> None:
        await self.client.aclose()


class SingleServer(Topology):
    """One Redis server: plain pub/sub on one connection, one blocking read over every inbox."""

    kind = "single"

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    @classmethod
    def connect(cls, target: RedisTarget, max_connections: int) -> SingleServer:
        pool = aioredis.BlockingConnectionPool.from_url(
            target.url, max_connections=max_connections, timeout=10, health_check_interval=15, socket_keepalive=True
        )
        # from_pool hands the pool to the client: Redis(connection_pool=...) would leave its sockets open on aclose()
        return cls(aioredis.Redis.from_pool(pool))

    @property
    def client(self) -> aioredis.Redis:
        return self.redis

    def subscriber(self, on_message: MessageHandler) -> Subscriber:
        return Subscriber(self.redis.connection_pool, on_message)

    def inbox_reader(self, pipe: CommandPipe, keys: Keys, group: str) -> InboxReader:
        return BlockingInboxReader(self.redis, pipe, keys, group)


class SentinelServer(SingleServer):
    """The master that Sentinel names: like one server, whose pool asks the sentinels where it is."""

    kind = "sentinel"

    @classmethod
    def connect(cls, target: RedisTarget, max_connections: int) -> SingleServer:
        sentinel_options: dict[str, Any] = {
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        }
        if target.tls:
            sentinel_options["ssl"] = True
        options = {"db": target.db, "ssl": target.tls, **connection_options(target)}
        # the pool asks the sentinels for the master's address on every new connection, so
        # commands and pub/sub follow a failover once their old connection is dropped
        return cls(sentinel_master(target.nodes, sentinel_options, target.service, options))

    async def close(self) -> None:
        """Close the master's connections, and the connections to the sentinels too."""
        sentinels = sentinel_connections(self.redis)
        await super().close()
        for sentinel in sentinels:
            await sentinel.aclose()


class Cluster(Topology):
    """Redis Cluster: sharded pub/sub per primary, inboxes read on notice."""

    kind = "cluster"
    publish_command = "SPUBLISH"
    inbox_notices = True

    def __init__(self, client: RedisCluster, target: RedisTarget) -> None:
        self.cluster = client
        self.target = target  # pub/sub opens its own connections to each primary with it

    @classmethod
    def connect(cls, target: RedisTarget, max_connections: int) -> Cluster:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            ssl=target.tls,
            max_connections=max_connections,
            **connection_options(target),
        )
        return cls(client, target)

    @property
    def client(self) -> RedisCluster:
        return self.cluster

    def subscriber(self, on_message: MessageHandler) -> Subscriber:
        return ShardedSubscriber(self.cluster, self.target, on_message)

    def inbox_reader(self, pipe: CommandPipe, keys: Keys, group: str) -> InboxReader:
        return NoticeInboxReader(self.subscriber, pipe, keys, group)


KINDS: dict[str, type[SingleServer] | type[Cluster]] = {
    "single": SingleServer,
    "sentinel": SentinelServer,
    "cluster": Cluster,
}


def open_topology(url: str, *, max_connections: int = 32) -> Topology:
    """The topology of the deployment ``url`` names, with its client.

    Raises ValueError for a URL that cannot work (settings refuse those first); connects lazily,
    so no I/O happens here. Close it with :meth:`Topology.close`.
    """
    target = parse_redis_url(url)
    return KINDS[target.kind].connect(target, max_connections)
