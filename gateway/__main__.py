"""``python -m gateway``: read settings, then serve HTTP and WebSocket until stopped.

This is the composition root: the one gateway module that may import the worker package, to run
bot workers inside the gateway when no Redis URL is set.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from shared import logs
from shared.settings import Settings, SettingsError

PROG = "chat-gateway"
# pending connections the kernel queues for accept(): aiohttp's default of 128 makes a reconnect
# storm wait for TCP retries (a second or more each) once a node's clients all come back at once
# (the kernel caps it at net.core.somaxconn)
LISTEN_BACKLOG = 4096
GC_YOUNG_THRESHOLD = 20_000  # allocations between two collections of the young generation (default 700)


def main(argv: list[str] | None = None) -> None:
    try:
        settings = Settings.from_sources(sys.argv[1:] if argv is None else argv, os.environ, scope="gateway", prog=PROG)
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.configure(settings.log_level, settings.log_format, settings.node_id)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from gateway.app import create_app
    from gateway.mint import mint_token

    secret = None
    banner = None
    if settings.single_process and not (settings.jwt_secret or settings.jwt_public_key or settings.jwks_url):
        # like a notebook server: an ephemeral key and a ready-to-open URL; the token is in the
        # fragment, which browsers never send to the server, so it stays out of access logs
        secret = secrets.token_urlsafe(32)
        token = mint_token(secret, "you", ttl=7 * 24 * 3600, name="you", roles=["admin"])
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        banner = (
            f"\n  Chat is running. Open this URL in a browser:\n\n    http://{host}:{settings.port}/#token={token}\n"
        )
    try:
        app = create_app(settings, secret=secret, cleanup_contexts=embedded_workers(settings))
    except SettingsError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.run(serve(app, settings, banner))


def embedded_workers(settings: Settings) -> list[Callable[[web.Application], AsyncIterator[None]]]:
    """The single-process mode's bot workers, as a cleanup context of the gateway app (or none)."""
    if not settings.single_process or settings.in_process_workers == 0:
        return []
    from gateway.app import BROKER
    from gateway.appkeys import METRICS
    from worker import embedded

    async def workers(app: web.Application) -> AsyncIterator[None]:
        # the same in-memory broker as the node's, and the gateway's /metrics shows the workers' figures
        async with embedded.running(settings, app[BROKER], app[METRICS].registry, settings.in_process_workers):
            yield

    return [workers]


def tune_gc() -> None:
    """Fewer, cheaper collections of the cyclic garbage collector on a node.

    A node allocates a few objects per frame and keeps a few per connection; with the default
    first threshold (700 allocations) it collected so often that, in a reconnect storm of 10,000
    connections, the collector took 14-22% of the node's CPU, most of it in full collections over
    every object the node holds. Everything loaded at start-up is moved out of the collector's
    sight (it lives as long as the process), and the young generation is collected less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


async def serve(app: web.Application, settings: Settings, banner: str | None) -> None:
    """Serve until SIGTERM/SIGINT, then drain while still listening, so readyz answers 503 meanwhile."""
    from gateway.access_log import AccessLogger
    from gateway.appkeys import NODE

    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        access_log=logging.getLogger("gateway.access"),
        shutdown_timeout=settings.drain_seconds + 5,
    )
    await runner.setup()
    tune_gc()
    try:
        await web.TCPSite(runner, settings.host, settings.port, backlog=LISTEN_BACKLOG).start()
        if banner:
            print(banner, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await app[NODE].connections.drain()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    main()
