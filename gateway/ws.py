"""The ``/ws`` endpoint: handshake checks, then the client's frames fed to its session in order.

Without compression (the default) the handler answers the upgrade itself and hands the TCP
connection over to the :class:`~gateway.connection.Connection`, which reads the frames as
they arrive (:mod:`gateway.wsframes`); aiohttp forgets the connection and the handler returns,
so an idle connection keeps no task, request or aiohttp object alive. With permessage-deflate
(``CHAT_COMPRESSION``) aiohttp's ``WebSocketResponse`` reads and writes, in this handler's task.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib

from aiohttp import WSMsgType, hdrs, web
from aiohttp.web_protocol import RequestHandler

from gateway import events as ev
from gateway.appkeys import NODE
from gateway.connection import Connection
from gateway.handshake import authenticate, json_error, origin_allowed
from gateway.node import Node
from gateway.principal import Principal
from shared.errors import CloseCode, ErrorCode

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


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
    if settings.compression:
        return await served_by_aiohttp(request, node, principal)
    return take_over(request, node, principal, accept_key(request))


def accept_key(request: web.Request) -> str:
    """The ``Sec-WebSocket-Accept`` answering a valid upgrade request; raises HTTP 400 for others."""
    headers = request.headers
    if headers.get(hdrs.UPGRADE, "").strip().lower() != "websocket":
        raise web.HTTPBadRequest(text="Upgrade: websocket is required")
    if "upgrade" not in (token.strip().lower() for token in headers.get(hdrs.CONNECTION, "").split(",")):
        raise web.HTTPBadRequest(text="Connection: upgrade is required")
    if headers.get(hdrs.SEC_WEBSOCKET_VERSION, "").strip() != "13":
        raise web.HTTPBadRequest(text="Sec-WebSocket-Version 13 is required", headers={"Sec-WebSocket-Version": "13"})
    key = headers.get(hdrs.SEC_WEBSOCKET_KEY, "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid:
        raise web.HTTPBadRequest(text="Sec-WebSocket-Key must be 16 bytes in base64")
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def take_over(request: web.Request, node: Node, principal: Principal, accept: str) -> web.StreamResponse:
    """Answer 101 and make the connection the transport's protocol; aiohttp lets go of the socket.

    Nothing here awaits: the client's first frame can only reach the connection.
    """
    handler = request.protocol
    transport = request.transport
    if transport is None or transport.is_closing() or not isinstance(handler, RequestHandler):
        return web.Response(status=499)  # the client went away during the checks
    switching = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode() + b"\r\n\r\n"
    )
    connection = node.open(principal, None, transport)
    connection.take_over(node.sweep, node.settings.max_frame_bytes)
    release(handler)
    connection.start(switching)  # the 101 and the welcome in one write
    # aiohttp tries to send this and finds the socket gone, which ends its request cleanly
    return web.StreamResponse(status=101)


def release(handler: RequestHandler) -> None:
    """Make aiohttp forget a TCP connection whose transport has a new protocol.

    The request handler is told its connection was lost, without the transport: it stops its
    timers, leaves the server's list and, once the handler returns, ends its task without
    closing the socket. Checked by tests/gateway/test_takeover.py against the installed aiohttp.
    """
    handler.transport = None
    handler.connection_lost(None)


async def served_by_aiohttp(request: web.Request, node: Node, principal: Principal) -> web.StreamResponse:
    """The compressed path: aiohttp's WebSocketResponse reads, writes and pings."""
    settings = node.settings
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
