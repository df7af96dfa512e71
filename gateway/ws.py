"""The ``/ws`` endpoint: handshake checks, the welcome frame, and the read loop of one client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from gateway.appkeys import NODE
from gateway.connection import Connection
from gateway.handshake import authenticate, json_error, origin_allowed
from gateway.node import Node
from gateway.ratelimit import TokenBucket
from gateway.session import Session, schedule_expiry
from shared import protocol
from shared.broker import BrokerUnavailable
from shared.errors import ChatError, CloseCode, ErrorCode

log = logging.getLogger(__name__)
ABUSE_STRIKES = 20  # refused frames in a row before the connection is closed with 4008


async def websocket(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    settings = node.settings
    if not origin_allowed(request.headers.get("Origin"), request.headers.get("Host"), settings):
        node.metrics.auth_failures.labels("origin").inc()
        return json_error(ErrorCode.FORBIDDEN, "this origin may not connect")
    principal = await authenticate(request, node.verifier, node.metrics, node.broker.revocations)
    if node.draining:
        return json_error(ErrorCode.UNAVAILABLE, "this node is shutting down; reconnect")
    if node.at_capacity(principal.user):
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
    reason = "client"
    try:
        welcome = {
            "type": "welcome",
            "protocol": protocol.PROTOCOL_VERSION,
            "session": connection.id,
            "user": principal.user,
            "node": settings.node_id,
            "heartbeat": settings.heartbeat,
        }
        connection.send(protocol.encode(welcome))
        schedule_expiry(node, connection)
        reason = await read_frames(node, connection, ws)
    finally:
        # aiohttp may cancel this handler once the peer is gone; the cleanup must still finish
        cleanup = node.spawn(node.closed(connection, reason))
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(cleanup)
    return ws


async def read_frames(node: Node, connection: Connection, ws: web.WebSocketResponse) -> str:
    """Handle client frames in order until the socket closes; returns why it closed."""
    session = Session(node, connection)
    settings = node.settings
    bucket = TokenBucket(settings.messages_per_second, settings.messages_burst, time.monotonic())
    strikes = 0
    async for message in ws:
        if message.type is WSMsgType.BINARY:
            await ws.close(code=CloseCode.UNSUPPORTED_DATA, message=b"binary frames are not supported")
            return "binary"
        if message.type is not WSMsgType.TEXT:
            continue
        if not bucket.take(time.monotonic()):
            strikes += 1
            node.metrics.rate_limited.inc()
            connection.send(protocol.error_frame(ErrorCode.RATE_LIMITED, "slow down", protocol.peek_ref(message.data)))
            if strikes >= ABUSE_STRIKES:
                await ws.close(code=CloseCode.POLICY, message=b"rate limit exceeded")
                return "rate_limited"
            continue
        strikes = 0
        await handle_text(node, session, message.data)
    if ws.close_code == CloseCode.MESSAGE_TOO_BIG:
        return "too_large"
    return "slow_consumer" if connection.closing else "client"


async def handle_text(node: Node, session: Session, text: str) -> None:
    ref = None
    try:
        frame = protocol.decode_client_frame(text, max_text_length=node.settings.max_text_length)
        ref = frame.ref
        node.metrics.frames_received.labels(protocol.frame_type(frame)).inc()
        await session.handle(frame)
    except ChatError as exc:
        exc_ref = getattr(exc, "ref", None)
        ref = exc_ref if exc_ref is not None else ref
        session.connection.send(protocol.error_frame(exc.code, exc.message, ref))
    except BrokerUnavailable:
        node.metrics.redis_errors.inc()
        session.connection.send(protocol.error_frame(ErrorCode.UNAVAILABLE, "storage is unavailable; retry", ref))
    except Exception:
        log.exception("frame handling failed", extra={"session": session.connection.id})
        session.connection.send(protocol.error_frame(ErrorCode.INTERNAL, "internal error", ref))
