"""``python -m worker`` / ``chat-worker``: bot workers sharing a Redis with the gateway nodes.

Run as many as needed; they split the running bots between them. SIGTERM (or SIGINT) drains:
no new requests, in-flight ones get ``drain_seconds`` to finish, then the bots are handed back
and the process exits 0. A bad setting exits 2 with one line on stderr naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence

from shared import logs
from shared.broker import make_broker
from shared.settings import Settings, SettingsError
from worker.http import create_app, start_server
from worker.metrics import WorkerMetrics
from worker.runner import Worker

PROG = "chat-worker"


def load_settings(argv: Sequence[str]) -> Settings:
    """Settings of a worker process; raises SettingsError, also when no Redis URL is set."""
    settings = Settings.from_sources(argv, os.environ, scope="worker", prog=PROG)
    if settings.redis_url is None:
        raise SettingsError("CHAT_REDIS_URL", "required: workers reach the gateways through Redis")
    return settings


async def serve(settings: Settings) -> None:
    """Run one worker until SIGTERM or SIGINT, then drain and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    broker = make_broker(settings)
    metrics = WorkerMetrics.create()
    worker = Worker.from_broker(broker, settings, metrics=metrics)
    http = None
    if settings.metrics_port:
        http = await start_server(create_app(metrics, worker.healthy), settings.host, settings.metrics_port)
    try:
        await worker.start()
        await stop.wait()
        await worker.stop()
    finally:
        if http is not None:
            await http.cleanup()
        await broker.close()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format, settings.node_id)
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    runner(serve(settings))


if __name__ == "__main__":
    main()
