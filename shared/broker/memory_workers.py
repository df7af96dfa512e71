"""In-memory bot leases and worker roster for the single-process mode, on a :class:`MemoryStore`.

Single-process only. Leases and heartbeats live on the store, so every worker built on one store
sees the same ones, as every worker sees the same Redis; both pass the same contract suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from shared.broker.memory import MemoryStore
from shared.broker.queue import BotLeases, WorkerRoster


class MemoryBotLeases(BotLeases):
    def __init__(self, store: MemoryStore) -> None:
        self.leases = store.leases  # bot -> (owner, monotonic expiry), shared by the store's workers

    def _holder(self, bot: str) -> str | None:
        lease = self.leases.get(bot)
        if lease is None or lease[1] <= time.monotonic():
            self.leases.pop(bot, None)
            return None
        return lease[0]

    async def claim(self, bot: str, owner: str, ttl: float) -> bool:
        if self._holder(bot) not in (None, owner):
            return False
        self.leases[bot] = (owner, time.monotonic() + ttl)
        return True

    async def renew(self, bot: str, owner: str, ttl: float) -> bool:
        if self._holder(bot) != owner:
            return False
        self.leases[bot] = (owner, time.monotonic() + ttl)
        return True

    async def release(self, bot: str, owner: str) -> bool:
        if self._holder(bot) != owner:
            return False
        del self.leases[bot]
        return True

    async def owner(self, bot: str) -> str | None:
        return self._holder(bot)


class MemoryWorkerRoster(WorkerRoster):
    def __init__(self, store: MemoryStore) -> None:
        self.store = store
        self.workers = store.workers  # worker -> monotonic expiry, shared by the store's workers
        self._control = asyncio.Event()  # set by the store when the running set changes
        store.control.append(self._control)

    async def heartbeat(self, worker: str, ttl: float) -> int:
        now = time.monotonic()
        self.workers[worker] = now + ttl
        for name in [name for name, expiry in self.workers.items() if expiry <= now]:
            del self.workers[name]
        return len(self.workers)

    async def leave(self, worker: str) -> None:
        self.workers.pop(worker, None)

    async def wait_bots_changed(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._control.wait(), timeout)
        changed = self._control.is_set()
        self._control.clear()
        return changed

    async def notify_bots_changed(self) -> None:
        self.store.notify_control()

    async def close(self) -> None:
        if self._control in self.store.control:
            self.store.control.remove(self._control)
