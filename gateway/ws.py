"""The ``/ws`` endpoint: handshake checks, then the client's frames fed to its session in order."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import WSMsgType, web

from gateway import events as ev
from gateway.appkeys import NODE
from gateway.connection import Connection
from gateway.handshake import authenticate, json_error, origin_allowed
from shared.errors import CloseCode, ErrorCode


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    settings = node.settings
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), settings):
        node.metrics.auth_failures.labels("origin").inc()
        return json_error(ErrorCode.FORBIDDEN, "this origin may not connect")
    principal = await authenticate(request, node.verifier, node.metrics, node.broker.revocations)
    if node.connections.draining:
        return json_error(ErrorCode.UNAVAILABLE, "this node is shutting down; reconnect")
    if node.connections.at_capacity(principal.user):
        node.metrics.rate_limited.inc()
        return json_error(ErrorCode.RATE_LIMITED, "too many connections for this user")
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_frame_bytes,
        heartbeat=settings.heartbeat,
        compress=settings.compression,
    )
    await ws.prepare(request)
    transport = request.transport
    if transport is None:
        return ws
    connection = node.open(principal, ws, transport)
    try:
        await connection.feed(ev.Opened())
        await read_frames(connection, ws)
    finally:
        # aiohttp may cancel this handler once the peer is gone; the cleanup must still finish
        cleanup = node.spawn(node.closed(connection, close_reason(connection, ws)))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)
    return ws


async def read_frames(connection: Connection, ws: web.WebSocketResponse) -> None:
    """Feed client frames to the session one at a time until the socket or the session closes."""
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await connection.feed(ev.Received(message.data))
        elif message.type is WSMsgType.BINARY:
            await connection.feed(ev.ReceivedBinary())
        if connection.session.closed:
            break
    await connection.wait_closed()


def close_reason(connection: Connection, ws: web.WebSocketResponse) -> str:
    """The label the end of this connection is counted under."""
    if connection.close_reason:
        return connection.close_reason
    if ws.close_code == CloseCode.MESSAGE_TOO_BIG:
        return "too_large"
    return connection.session.close_reason
