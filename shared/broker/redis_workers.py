"""Bot leases and the worker roster on Redis: leases as keys with an expiry, workers in a sorted set.

A lease is claimed, renewed and released by a compare-and-set script, so only its holder changes
it. Heartbeats are scored with Redis's clock, so workers whose clocks disagree still agree on
who is alive. Workers hear that the bots to run changed on the plain control channel (PUBLISH
reaches every node of a cluster too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from shared.broker.queue import BotLeases, WorkerRoster
from shared.broker.redis_compat import close_pubsub
from shared.broker.redis_link import CommandPipe, Script
from shared.broker.redis_replies import text
from shared.broker.redis_topology import Topology
from shared.keys import Keys

log = logging.getLogger(__name__)
LEASE = Script("lease")
HEARTBEAT = Script("heartbeat")


class RedisBotLeases(BotLeases):
    def __init__(self, pipe: CommandPipe, keys: Keys) -> None:
        self.pipe = pipe
        self.keys = keys

    async def _lease(self, bot: str, owner: str, ttl: float, op: str) -> bool:
        return bool(await self.pipe.script(LEASE, [self.keys.lease(bot)], [owner, max(1, int(ttl * 1000)), op]))

    async def claim(self, bot: str, owner: str, ttl: float) -> bool:
        return await self._lease(bot, owner, ttl, "claim")

    async def renew(self, bot: str, owner: str, ttl: float) -> bool:
        return await self._lease(bot, owner, ttl, "renew")

    async def release(self, bot: str, owner: str) -> bool:
        return await self._lease(bot, owner, 0, "release")

    async def owner(self, bot: str) -> str | None:
        owner = await self.pipe.execute("GET", self.keys.lease(bot))
        return text(owner) if owner is not None else None


class RedisWorkerRoster(WorkerRoster):
    def __init__(self, topology: Topology, pipe: CommandPipe, keys: Keys) -> None:
        self.client = topology.client  # opens the control channel's subscription
        self.pipe = pipe
        self.keys = keys
        self._control: PubSub | None = None  # subscription to the control channel
        self._cancel_handlers: list[Callable[[str, str], None]] = []

    async def heartbeat(self, worker: str, ttl: float) -> int:
        return int(await self.pipe.script(HEARTBEAT, [self.keys.workers()], [worker, int(ttl * 1000)]))

    async def leave(self, worker: str) -> None:
        await self.pipe.execute("ZREM", self.keys.workers(), worker)

    async def wait_bots_changed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            if self._control is None:
                self._control = self.client.pubsub(ignore_subscribe_messages=True)
                await self._control.subscribe(self.keys.control_channel())
            while (remaining := deadline - time.monotonic()) > 0:
                message = await self._control.get_message(timeout=remaining)
                if message is not None and message["type"] == "message" and not self._cancel_notice(message):
                    while (queued := await self._control.get_message(timeout=0)) is not None:
                        self._cancel_notice(queued)  # one look at the bots answers every other notice so far
                    return True
        except (RedisError, OSError) as exc:
            log.warning("control channel lost: %s", exc)
            await self._close_control()
            await asyncio.sleep(max(0.0, min(1.0, deadline - time.monotonic())))  # back off, then rescan
            return True
        return False

    def on_cancel(self, handler: Callable[[str, str], None]) -> None:
        self._cancel_handlers.append(handler)

    def _cancel_notice(self, message: dict[str, Any]) -> bool:
        """Hand a cancel notice on the control channel to the handlers; False for any other notice."""
        room, message_id = parse_cancel_notice(message.get("data"))
        if not room:
            return False
        for handler in self._cancel_handlers:
            try:
                handler(room, message_id)
            except Exception:
                log.exception("a cancel handler failed")
        return True

    async def notify_bots_changed(self) -> None:
        await self.pipe.execute("PUBLISH", self.keys.control_channel(), "")

    async def _close_control(self) -> None:
        if self._control is not None:
            control, self._control = self._control, None
            with contextlib.suppress(RedisError, OSError):
                await close_pubsub(control)

    async def close(self) -> None:
        await self._close_control()


CANCEL_NOTICE = b"cancel\x1f"  # control-channel notice: "cancel US <room> US <message id>"


def cancel_notice(room: str, message_id: str) -> bytes:
    return b"\x1f".join((CANCEL_NOTICE[:-1], room.encode(), message_id.encode()))


def parse_cancel_notice(data: object) -> tuple[str, str]:
    """(room, message id) of a cancel notice; ("", "") for anything else."""
    if not isinstance(data, bytes) or not data.startswith(CANCEL_NOTICE):
        return "", ""
    parts = data.split(b"\x1f")
    if len(parts) != 3:
        return "", ""
    try:
        return parts[1].decode(), parts[2].decode()
    except UnicodeDecodeError:
        return "", ""
