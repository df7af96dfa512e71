"""Operations gateway nodes send each other on the control channel: typed, versioned. Pure; no I/O.

A node acts on what it can read and ignores the rest. During a rolling deploy nodes of two
releases share the channel, so an operation of a newer version, or one this release does not
know, raises :class:`UnknownOperation`: the node counts it and goes on, and never stops reading
the channel over it. Operations published before versions existed carry no ``v`` and are read as
version 1, which has the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from shared.packets import BadPacket

VERSION = 1
_MAX_FIELD = 128  # user and room ids are at most this long in every release


class UnknownOperation(ValueError):
    """A well-formed control operation of another version, or of a kind this release lacks."""


@dataclass(frozen=True, slots=True)
class Revoke:
    """Close every connection of ``user`` (its tokens were revoked)."""

    user: str


@dataclass(frozen=True, slots=True)
class Evict:
    """Remove ``user`` (every user when None) from ``room``: the membership or the room is gone."""

    room: str
    user: str | None = None


ControlOperation = Revoke | Evict


def encode(operation: ControlOperation) -> bytes:
    """The frame of a control operation (it travels inside a packet)."""
    fields: dict[str, Any] = {"type": "control", "v": VERSION}
    match operation:
        case Revoke(user=user):
            fields.update(op="revoke", user=user)
        case Evict(room=room, user=user):
            fields.update(op="evict", room=room)
            if user is not None:
                fields["user"] = user
    return orjson.dumps(fields)


def decode(frame: bytes) -> ControlOperation:
    """Read a control frame. Raises BadPacket if it is malformed, UnknownOperation if it is not ours to read."""
    try:
        fields = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise BadPacket("the control frame is not JSON") from None
    if not isinstance(fields, dict):
        raise BadPacket("the control frame is not an object")
    version = fields.get("v", VERSION)
    if version != VERSION or isinstance(version, bool):
        raise UnknownOperation(f"control version {str(version)[:20]!r}")
    match fields.get("op"):
        case "revoke":
            return Revoke(_text(fields, "user"))
        case "evict":
            user = fields.get("user")
            return Evict(_text(fields, "room"), None if user is None else _text(fields, "user"))
        case other:
            raise UnknownOperation(f"control operation {str(other)[:40]!r}")


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_FIELD:
        raise BadPacket(f"the control operation's {name} is not an id")
    return value
