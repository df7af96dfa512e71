"""Sharded pub/sub on a Redis Cluster: one connection per primary, channels that follow their slot.

A shard channel (SSUBSCRIBE) is served only by the primary that owns its slot, so the
:class:`ShardedSubscriber` holds each channel on that primary's connection and, when a link fails
or a slot moves, reads the slots again and moves the channels that must move.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from shared.broker.redis_compat import node_for, refresh_slots
from shared.broker.redis_link import LINK_ERRORS, node_pool
from shared.broker.redis_pubsub import Link, MessageHandler, ShardLink, Subscriber
from shared.redis_url import RedisTarget

log = logging.getLogger(__name__)


class ShardedSubscriber(Subscriber):
    """Shard channels spread over one pub/sub connection per primary, each on the primary of its slot.

    When channels had to move to another primary, events may have been missed: ``on_gap`` is called.
    """

    def __init__(self, cluster: RedisCluster, target: RedisTarget, on_message: MessageHandler) -> None:
        super().__init__(None, on_message)
        self.cluster = cluster
        self.target = target  # how to open a pool to one primary (address, credentials, TLS)
        self._rebalance_task: asyncio.Task[None] | None = None
        self._again = False  # more trouble was reported while a rebalance ran

    def trouble(self) -> None:
        """A connection failed or a channel moved: read the slots again and move channels."""
        if self._rebalance_task is not None and not self._rebalance_task.done():
            self._again = True
            return
        self._rebalance_task = asyncio.get_running_loop().create_task(self._rebalance(), name="redis-pubsub-slots")

    def _node_link(self, node: ClusterNode) -> Link:
        link = self._links.get(node.name)
        if link is None:
            pool = node_pool(self.target, node.host, int(node.port))  # annotated str | int; an int here
            link = self._links[node.name] = ShardLink(node.name, pool, self, owns_pool=True)
        return link

    async def _owner(self, channel: bytes) -> Link:
        await self.cluster.initialize()
        return self._node_link(node_for(self.cluster, channel))

    async def _rebalance(self) -> None:
        while True:
            self._again = False
            try:
                await refresh_slots(self.cluster)
            except LINK_ERRORS as exc:
                # the links keep retrying and report trouble again, which brings us back here
                log.warning("cannot read the cluster's slots: %s", exc)
                return
            if await self._move_channels():
                log.warning("pub/sub channels moved to other cluster nodes; filling in from history")
                self._gap()
            if not self._again:
                return

    async def _move_channels(self) -> bool:
        """Hold every wanted channel on the primary that owns it now; True if any channel moved."""
        moved = failed = False
        for channel in list(self._wanted):
            try:
                link = self._node_link(node_for(self.cluster, channel))
            except RedisClusterException:
                continue  # the slot is not served right now; a later pass moves it
            moved |= self._where.get(channel, link.name) != link.name
            self._where[channel] = link.name
            if channel not in link.channels():
                try:
                    await link.subscribe(channel)
                except (RedisError, OSError) as exc:
                    log.warning("cannot subscribe on %s: %s", link.name, exc)
                    failed = True
        primaries = {node.name for node in self.cluster.get_primaries()}
        for link in list(self._links.values()):
            for channel in list(link.channels()):
                if self._where.get(channel) == link.name:
                    continue
                link.forget(channel)  # moved away: the old node dropped it, or is gone
            if not link.channels() and link.name not in primaries:
                await self._links.pop(link.name).close()
        if failed:
            await asyncio.sleep(1.0)  # then one more pass
            self._again = True
        return moved

    async def close(self) -> None:
        if self._rebalance_task is not None:
            self._rebalance_task.cancel()
            await asyncio.gather(self._rebalance_task, return_exceptions=True)
        await super().close()
