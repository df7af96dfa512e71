"""WebSocket framing of server frames, so one event is framed once and written to many sockets."""

from __future__ import annotations

import struct

_TEXT_FIN = 0x81


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame carrying ``payload`` (RFC 6455 §5.2)."""
    length = len(payload)
    if length < 126:
        return bytes((_TEXT_FIN, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _TEXT_FIN, 126, length) + payload
    return struct.pack("!BBQ", _TEXT_FIN, 127, length) + payload
