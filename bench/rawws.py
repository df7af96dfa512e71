"""A minimal WebSocket client (RFC 6455, text frames) as an asyncio protocol, for the load generator.

Receiving is the load generator's main cost: thousands of clients each get every message of a big
room. aiohttp's client builds a message object, queues it and wakes a task for every frame (about
20 µs of CPU per received frame here); this protocol parses every frame of a read in one loop and
hands each text straight to a callback (about 12 µs, system calls included), so more of the machine
is left to the servers being measured. Before a callback is set (handshake and join), texts queue up for ``receive()``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
from collections import deque
from collections.abc import Callable

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING = 0x1, 0x8, 0x9
_CONTINUATION, _PONG = 0x0, 0xA


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``key`` (one big-integer XOR instead of a byte loop)."""
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(size, "big")


def _frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    key = random.randbytes(4)
    return head + key + _mask(payload, key)


class RawWebSocket(asyncio.Protocol):
    """One client connection. Use :func:`connect`; then ``receive()`` until ``on_text`` is set."""

    def __init__(self, request: bytes, key: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.on_text: Callable[[str], None] | None = None  # set once joined: texts bypass the queue
        self.on_close: Callable[[], None] | None = None
        self.closed = False
        self._request = request
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self._upgraded: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._fragments: list[bytes] = []  # a fragmented text frame's pieces so far
        self._inbox: deque[str] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[: end + 4]
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " " or self._accept.decode() not in head:
                self._upgraded.set_exception(ConnectionError(f"upgrade refused: {status} {self._buffer[:200]!r}"))
                self._abort()
                return
            self._upgraded.set_result(None)
        self._parse()

    def _parse(self) -> None:
        buf, pos, end = self._buffer, 0, len(self._buffer)
        while end - pos >= 2:
            first, size, head = buf[pos], buf[pos + 1] & 0x7F, 2
            if size == 126:
                if end - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if end - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < head + size:
                break
            payload = bytes(buf[pos + head : pos + head + size])
            pos += head + size
            self._on_frame(first & 0x0F, bool(first & 0x80), payload)
        del buf[:pos]

    def _on_frame(self, opcode: int, final: bool, payload: bytes) -> None:
        if opcode in (TEXT, _CONTINUATION):
            if not final:
                self._fragments.append(payload)
                return
            if self._fragments:
                payload, self._fragments = b"".join([*self._fragments, payload]), []
            text = payload.decode()
            if self.on_text is not None:
                self.on_text(text)
            else:
                self._inbox.append(text)
                self._wake()
        elif opcode == PING:
            self._write(_frame(_PONG, payload))
        elif opcode == CLOSE:
            self._write(_frame(CLOSE, payload[:2]))
            self._abort()

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self._upgraded.done():
            self._upgraded.set_exception(ConnectionError(f"closed during upgrade: {exc}"))
        self._wake()
        if self.on_close is not None:
            self.on_close()

    async def upgraded(self) -> None:
        await self._upgraded

    async def receive(self) -> str:
        """The next text frame; raise ConnectionError if the connection closes first."""
        while not self._inbox:
            if self.closed:
                raise ConnectionError("connection closed")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._inbox.popleft()

    def deliver_to(self, callback: Callable[[str], None]) -> None:
        """From now on hand every text to ``callback`` as it is parsed, starting with those queued."""
        self.on_text = callback
        while self._inbox:
            callback(self._inbox.popleft())

    def send(self, text: str) -> None:
        """Queue a text frame for sending (the transport buffers it; no await needed)."""
        if self.closed:
            raise ConnectionError("connection closed")
        self._write(_frame(TEXT, text.encode()))

    def close(self) -> None:
        """Send a normal close frame and close the transport."""
        self._write(_frame(CLOSE, (1000).to_bytes(2, "big")))
        self._abort()


async def connect(url: str) -> RawWebSocket:
    """Open ``ws://host:port/path?query`` and complete the upgrade; raise ConnectionError if refused."""
    if not url.startswith("ws://"):
        raise ValueError(f"only ws:// URLs: {url}")
    hostport, _, path = url[5:].partition("/")
    host, _, port = hostport.rpartition(":")
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(lambda: RawWebSocket(request, key), host, int(port))
    try:
        await protocol.upgraded()
    except BaseException:
        protocol._abort()  # a timed-out or cancelled upgrade must not leave its socket open
        raise
    return protocol
