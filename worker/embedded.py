"""Workers inside the gateway process (the single-process mode, on the in-memory broker).

The gateway's entry point wraps :func:`running` in one of the app's cleanup contexts, so the
workers start once the broker is up and are drained before it closes. The worker package never
imports the gateway: the entry point hands over the broker and the registry of its /metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry

from shared.broker import Broker
from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runner import Worker


@asynccontextmanager
async def running(settings: Settings, broker: Broker, registry: CollectorRegistry, count: int) -> AsyncIterator[None]:
    """Run ``count`` workers on the parts of ``broker`` until the block ends, then drain them.

    Their figures go on ``registry`` (one set shared by all of them), so they appear on the
    gateway's /metrics.
    """
    metrics = WorkerMetrics.create(registry)
    workers: list[Worker] = []
    try:
        for index in range(count):
            worker = Worker.from_broker(broker, settings, consumer=f"{settings.node_id}-w{index}", metrics=metrics)
            await worker.start()
            workers.append(worker)
        yield
    finally:
        # one by one, in start order, as a multi-process deployment would stop them
        for worker in workers:
            await worker.stop()
