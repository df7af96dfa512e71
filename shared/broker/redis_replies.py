"""Reading Redis replies whichever protocol version gives them (RESP2 lists or RESP3 maps)."""

from __future__ import annotations

from typing import Any


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def fields(raw: Any) -> dict[bytes, bytes]:
    """A stream entry's or a hash's fields: RESP3 gives a map, RESP2 a flat list."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))


def streams(raw: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply as (stream, entries) pairs, whichever reply shape the client gives."""
    if not raw:
        return []
    return list(raw.items()) if isinstance(raw, dict) else [(item[0], item[1]) for item in raw]
