"""One client connection: who it is, what it joined, and how bytes reach its socket.

Room events arrive already framed (see :mod:`gateway.wire`) and are written straight to the
socket's transport: no task, queue or copy per member. The transport's own buffer is the
outbox; when a client falls more than ``outbox_max_bytes`` behind, it is closed with 4008 and
recovers with ``since``. With compression on, frames go through aiohttp's writer instead,
because permessage-deflate needs per-connection state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from gateway.wire import text_frame
from shared.errors import CloseCode

if TYPE_CHECKING:
    from gateway.auth import Principal

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0


class Connection:
    """State of one WebSocket on this node."""

    __slots__ = (
        "_on_slow",
        "closing",
        "compress",
        "expiry_timer",
        "id",
        "max_buffer",
        "pending",
        "principal",
        "rooms",
        "transport",
        "user",
        "ws",
    )

    def __init__(
        self,
        connection_id: str,
        principal: Principal,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        *,
        max_buffer: int,
        compress: bool,
        on_slow: Callable[[Connection], None],
    ) -> None:
        self.id = connection_id
        self.principal = principal
        self.user = principal.user  # cached: compared for every delivered event
        self.ws = ws
        self.transport = transport
        self.max_buffer = max_buffer
        self.compress = compress
        self.rooms: set[str] = set()
        # rooms being joined: live events buffered as (message id, framed bytes) until replay is done
        self.pending: dict[str, list[tuple[str, bytes]]] = {}
        self.closing = False
        self.expiry_timer: asyncio.TimerHandle | None = None
        self._on_slow = on_slow

    def send(self, frame: bytes) -> None:
        """Send one server frame (JSON bytes) to this client."""
        if self.compress:
            self._send_compressed(frame)
        else:
            self.write(text_frame(frame))

    def write(self, framed: bytes) -> None:
        """Write an already framed event; close the client if it is too far behind."""
        if self.closing or self.transport.is_closing():
            return
        if self.compress:
            # framed bytes cannot be compressed as they are: strip the header and send the payload
            self._send_compressed(_payload(framed))
            return
        self.transport.write(framed)
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)

    def _send_compressed(self, frame: bytes) -> None:
        if self.closing or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > self.max_buffer:
            self._on_slow(self)
            return
        task = asyncio.get_running_loop().create_task(self.ws.send_frame(frame, WSMsgType.TEXT))
        task.add_done_callback(_ignore_result)

    def close(self, code: int, message: str = "") -> asyncio.Task[None]:
        """Close with ``code``; abort the TCP connection if the close cannot be written in time."""
        self.closing = True
        return asyncio.get_running_loop().create_task(self._close(code, message))

    async def _close(self, code: int, message: str) -> None:
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), CLOSE_TIMEOUT)
        except (TimeoutError, ConnectionError, RuntimeError):
            self.transport.abort()

    def buffered(self, room: str, message_id: str, framed: bytes) -> bool:
        """Keep a live event of a room being joined; False when the room is not being joined."""
        waiting = self.pending.get(room)
        if waiting is None:
            return False
        waiting.append((message_id, framed))
        return True


def _payload(framed: bytes) -> bytes:
    marker = framed[1] & 0x7F
    return framed[2 + {126: 2, 127: 8}.get(marker, 0) :]


def _ignore_result(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
        task.result()


SLOW_CONSUMER = CloseCode.POLICY
