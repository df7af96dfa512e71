"""Client WebSocket frames read without I/O (RFC 6455 §5), the server's side of the connection.

:class:`FrameReader` takes the bytes of one connection as they arrive and returns what they
complete: whole text or binary messages (fragments joined), pings, pongs and the peer's close.
When the bytes break the protocol it returns :class:`Fail` with the close code to send
(1002 protocol error, 1007 invalid UTF-8, 1009 too big) and reads nothing more.

What is refused, as §5 and §7 require of a server: unmasked frames, reserved bits (no
extension is negotiated on this path), reserved opcodes, fragmented or oversized (> 125 bytes)
control frames, a continuation without a message to continue, a new message before the last
one ended, a 64-bit length with its top bit set, close codes that may not be sent, and text that
is not UTF-8. Text is decoded as its fragments arrive, so invalid UTF-8 fails at the fragment
that shows it, also when a character is split across fragments. A message larger than
``max_size`` fails with 1009 as soon as a header announces it, before its payload is buffered.

The reader holds no buffer while nothing is half received: an idle connection's reader is a
few references.
"""

from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_NO_STATUS = 1005  # a close frame without a code (never sent, §7.4.1)
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

_MAX_CONTROL_PAYLOAD = 125
_MAX_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, two of them the code
# codes a peer may put in a close frame (§7.4.1, §7.4.2 and the IANA registry); 3000-4999 are free
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


@dataclass(frozen=True, slots=True)
class Text:
    """A whole text message."""

    text: str


@dataclass(frozen=True, slots=True)
class Binary:
    """A whole binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping: answer it with a pong carrying ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong (solicited or not)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame; ``code`` is 1005 when it carried none."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The peer broke the protocol: close with ``code``; nothing more is read."""

    code: int
    reason: str


Frame = Text | Binary | Ping | Pong | Close | Fail


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """``payload`` XORed with the four-byte ``mask`` repeated (§5.3)."""
    length = len(payload)
    if not length:
        return b""
    key = (bytes(mask) * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


def close_frame(code: int | None, reason: str = "") -> bytes:
    """An unmasked close frame with ``code`` (none when None) and ``reason`` cut to fit 125 bytes."""
    if code is None:
        return b"\x88\x00"
    data = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore").encode()
    payload = struct.pack("!H", code) + data
    return bytes((0x88, len(payload))) + payload


def control_frame(opcode: int, payload: bytes = b"") -> bytes:
    """An unmasked ping or pong frame carrying at most 125 bytes of ``payload``."""
    payload = payload[:_MAX_CONTROL_PAYLOAD]
    return bytes((0x80 | opcode, len(payload))) + payload


def valid_close_code(code: int) -> bool:
    """Whether a peer may send ``code`` in a close frame."""
    return code in _SENDABLE_CODES or 3000 <= code <= 4999


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameReader:
    """The client frames of one connection, parsed as its bytes arrive. No I/O."""

    __slots__ = ("_buffer", "_data", "_decoder", "_done", "_max_size", "_opcode", "_size", "_text")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size  # largest message, all fragments together (CHAT_MAX_FRAME_BYTES)
        self._buffer = b""  # bytes of a frame not yet complete; empty between frames
        self._done = False  # failed or closed: the rest of the stream is ignored
        # a fragmented message in progress (opcode 0: none): its size so far and what it carried,
        # decoded as it came for text (with the decoder's state between fragments)
        self._opcode = OP_CONTINUATION
        self._size = 0
        self._text: list[str] | None = None
        self._data: bytearray | None = None
        self._decoder: codecs.IncrementalDecoder | None = None

    @property
    def done(self) -> bool:
        """True once a close or a failure was returned: nothing more will be."""
        return self._done

    def feed(self, data: bytes) -> list[Frame]:
        """Everything ``data`` completes, in order; a :class:`Close` or :class:`Fail` is last."""
        if self._done:
            return []
        buf = self._buffer + data if self._buffer else data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        try:
            while (header := self._header(buf, pos, end)) is not None:
                opcode, fin, start, length = header
                payload = unmask(buf[start : start + length], buf[start - 4 : start])
                pos = start + length
                frame = self._frame(opcode, fin, payload)
                if frame is None:
                    continue
                frames.append(frame)
                if isinstance(frame, Close | Fail):
                    self._end()
                    return frames
        except _Refused as refused:
            frames.append(Fail(refused.code, refused.reason))
            self._end()
            return frames
        self._buffer = buf[pos:] if pos < end else b""
        return frames

    def _header(self, buf: bytes, pos: int, end: int) -> tuple[int, int, int, int] | None:
        """(opcode, fin, payload start, payload length) of the frame at ``pos``; None until it is all here.

        Raises _Refused when the header alone breaks the protocol.
        """
        if end - pos < 2:
            return None
        first, second = buf[pos], buf[pos + 1]
        if first & 0x70:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if not second & 0x80:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        opcode, fin, length = first & 0x0F, first & 0x80, second & 0x7F
        start = pos + 6
        if length == 126:
            if end - pos < 4:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            start = pos + 8
        elif length == 127:
            if end - pos < 10:
                return None
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if length >> 63:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "frame length out of range")
            start = pos + 14
        self._check(opcode, fin, length)
        if end < start + length:
            return None
        return opcode, fin, start, length

    def _check(self, opcode: int, fin: int, length: int) -> None:
        """Raise _Refused when a frame with this header must fail the connection."""
        if opcode >= OP_CLOSE:
            if opcode > OP_PONG:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "reserved opcode")
            if not fin:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > _MAX_CONTROL_PAYLOAD:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "control frame too long")
            return
        if opcode > OP_BINARY:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "reserved opcode")
        if opcode == OP_CONTINUATION:
            if self._opcode == OP_CONTINUATION:
                raise _Refused(CLOSE_PROTOCOL_ERROR, "continuation without a message")
        elif self._opcode != OP_CONTINUATION:
            raise _Refused(CLOSE_PROTOCOL_ERROR, "a new message before the last one ended")
        else:
            self._size = 0
        if self._size + length > self._max_size:
            raise _Refused(CLOSE_TOO_BIG, "message too big")

    def _frame(self, opcode: int, fin: int, payload: bytes) -> Frame | None:
        """What one complete, well-formed frame means; None for a fragment that ends nothing."""
        if opcode == OP_TEXT and fin:
            try:
                return Text(payload.decode())
            except UnicodeDecodeError:
                return Fail(CLOSE_INVALID_DATA, "invalid UTF-8")
        if opcode == OP_BINARY and fin:
            return Binary(payload)
        if opcode >= OP_CLOSE:
            return self._control(opcode, payload)
        if opcode != OP_CONTINUATION:
            self._opcode = opcode
            if opcode == OP_TEXT:
                self._text, self._decoder = [], _utf8_decoder()
            else:
                self._data = bytearray()
        return self._fragment(fin, payload)

    def _fragment(self, fin: int, payload: bytes) -> Frame | None:
        self._size += len(payload)
        text, data = self._text, self._data
        if text is not None and self._decoder is not None:
            try:
                text.append(self._decoder.decode(payload, final=bool(fin)))
            except UnicodeDecodeError:
                return Fail(CLOSE_INVALID_DATA, "invalid UTF-8")
        elif data is not None:
            data += payload
        if not fin:
            return None
        self._opcode, self._text, self._data, self._decoder = OP_CONTINUATION, None, None, None
        if text is not None:
            return Text("".join(text))
        return Binary(bytes(data or b""))

    @staticmethod
    def _control(opcode: int, payload: bytes) -> Frame:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if not payload:
            return Close(CLOSE_NO_STATUS, "")
        if len(payload) == 1:
            return Fail(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big")
        if not valid_close_code(code):
            return Fail(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            return Fail(CLOSE_INVALID_DATA, "invalid UTF-8 in the close reason")
        return Close(code, reason)

    def _end(self) -> None:
        self._done = True
        self._buffer = b""
        self._text = self._data = self._decoder = None
