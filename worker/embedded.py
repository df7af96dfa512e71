"""Workers inside the gateway process (the single-process mode, on the in-memory broker).

The gateway calls ``await start(settings, broker, index)`` once per in-process worker and awaits
the returned ``stop()`` at shutdown. To export the workers' metrics on the gateway's /metrics,
make one ``create_metrics(registry)`` and pass it to every ``start``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runner import Worker


def create_metrics(registry: CollectorRegistry) -> WorkerMetrics:
    """Worker metrics on the given registry, to share between the in-process workers."""
    return WorkerMetrics.create(registry)


async def start(
    settings: Settings, broker: Any, index: int = 0, *, metrics: WorkerMetrics | None = None
) -> Callable[[], Awaitable[None]]:
    """Start worker number ``index`` on the parts of ``broker``; returns its graceful ``stop``."""
    worker = Worker.from_broker(broker, settings, consumer=f"{settings.node_id}-w{index}", metrics=metrics)
    await worker.start()
    return worker.stop
