"""The application factory: routes, shared state and paired start-up/teardown of resources."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import api
from gateway.appkeys import METRICS, NODE, SETTINGS
from gateway.auth import TokenVerifier
from gateway.handshake import json_error
from gateway.metrics import GatewayMetrics
from gateway.mint import mint_token
from gateway.node import Node
from gateway.openapi import openapi_json
from gateway.ws import websocket
from shared.broker import Broker, BrokerUnavailable, make_broker
from shared.errors import ErrorCode
from shared.settings import Settings

log = logging.getLogger(__name__)
STATIC = resources.files("gateway").joinpath("static")
BROKER = web.AppKey("broker", Broker)


# aiohttp's cleanup-context shape: code before the ``yield`` starts something, code after stops it
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


def create_app(
    settings: Settings,
    *,
    broker: Broker | None = None,
    secret: str | None = None,
    store: Any = None,
    cleanup_contexts: Sequence[CleanupContext] = (),
) -> web.Application:
    """An unstarted gateway app. ``broker`` or ``store`` let tests run several nodes in one process.

    ``cleanup_contexts`` start after the node's own resources and stop before them, so they may
    read ``app[BROKER]`` and ``app[METRICS]``; the node reports ready only once they all started.
    The entry point uses them to run bot workers in the same process.
    """
    app = web.Application(middlewares=[api.api_errors], client_max_size=1 << 20)
    metrics = GatewayMetrics()
    app[SETTINGS] = settings
    app[METRICS] = metrics

    async def resources_ctx(app: web.Application) -> AsyncIterator[None]:
        owned = broker is None
        the_broker = broker or make_broker(settings, store=store)
        verifier = TokenVerifier(settings, secret=secret)
        node = Node(settings, the_broker, verifier, metrics)
        node.verifier_secret = secret or settings.jwt_secret
        app[BROKER] = the_broker
        app[NODE] = node
        await node.intake.start()
        background = [
            asyncio.create_task(node.upkeep.keep_presence(), name="presence"),
            asyncio.create_task(node.probe.run(), name="probe"),
        ]
        yield
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await node.close()
        await verifier.close()
        if owned:
            await the_broker.close()

    async def ready_ctx(app: web.Application) -> AsyncIterator[None]:
        metrics.ready.set(1)
        yield
        metrics.ready.set(0)

    app.cleanup_ctx.append(resources_ctx)
    app.cleanup_ctx.extend(cleanup_contexts)
    app.cleanup_ctx.append(ready_ctx)  # last, so "ready" is set when everything runs and cleared first
    app.on_shutdown.append(_close_sockets)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/", index)
    app.router.add_get("/api/openapi.json", openapi_json)
    app.router.add_static("/static", str(STATIC), append_version=False)
    app.add_routes(api.routes)
    if settings.dev_login:
        app.router.add_post("/api/dev/token", dev_token)
    return app


async def dev_token(request: web.Request) -> web.Response:
    """Mint a token for any user name: development only, behind --dev-login."""
    secret = request.app[NODE].verifier_secret
    try:
        body = await request.json()
    except ValueError:
        body = None
    user = body.get("user") if isinstance(body, dict) else None
    if not isinstance(user, str) or not 0 < len(user.strip()) <= 64:
        return json_error(ErrorCode.BAD_REQUEST, 'send {"user": "a name of 1-64 characters"}')
    if secret is None:
        return json_error(ErrorCode.NOT_FOUND, "dev login needs an HS256 secret")
    token = mint_token(secret, user.strip(), ttl=12 * 3600, name=user.strip())
    return web.json_response({"token": token, "exp": int(time.time()) + 12 * 3600})


async def _close_sockets(app: web.Application) -> None:
    await app[NODE].connections.drain()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "node": request.app[SETTINGS].node_id})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[NODE]
    if node.connections.draining:
        return web.json_response({"status": "draining"}, status=503)
    try:
        await asyncio.wait_for(node.broker.ping(), 2)
    except (BrokerUnavailable, OSError, TimeoutError):
        return web.json_response({"status": "broker unavailable"}, status=503)
    if not node.pubsub_healthy():
        return web.json_response({"status": "pub/sub probe lost"}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.subscriptions.set(request.app[NODE].broker.fanout.subscriptions())
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC.joinpath("index.html")
    if not page.is_file():
        return web.Response(text="chat gateway", content_type="text/plain")
    return web.Response(body=page.read_bytes(), content_type="text/html", headers={"Cache-Control": "no-cache"})
