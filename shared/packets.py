"""Packets: how a room event travels between processes over pub/sub. Pure; no I/O.

A packet is ``<message id> US <excluded user> LF <frame>``. The header lets a node merge replayed
history with live events by id and skip the sender's own typing and presence frames; the frame
after the newline is exactly what clients receive.

Anything that can publish on the Redis can put bytes on a channel a node reads, so nothing here
trusts its input: :func:`unpack` refuses a header that is not of this shape or an id that is not a
history id, and :func:`check_frame` a frame for clients that is not a JSON object with a string
``type``. Both raise :class:`BadPacket`; the node drops such a packet instead of forwarding it to
clients, or failing on it later in a merge by id.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

PACKET_FIELD = b"\x1f"
PACKET_END = b"\n"
_MESSAGE_ID = re.compile(rb"[0-9]{1,15}-[0-9]{1,10}\Z")
_MAX_HEADER = 512  # an id (26 bytes) plus a user id (at most 128 characters of UTF-8): far below this


class BadPacket(ValueError):
    """Bytes on a pub/sub channel that are not a packet this version can read."""


class Packet(NamedTuple):
    message_id: str  # the history id, or "" for an event that is not kept
    exclude_user: str  # this user's connections do not receive the frame, or ""
    frame: bytes  # exactly what clients receive


def pack(frame: bytes, *, message_id: str = "", exclude_user: str = "") -> bytes:
    """Wrap a frame for pub/sub. ``exclude_user``'s connections do not receive it."""
    return b"".join((message_id.encode(), PACKET_FIELD, exclude_user.encode(), PACKET_END, frame))


def unpack(packet: bytes) -> Packet:
    """Read a packet's header; raises :class:`BadPacket` if it is malformed (the frame is not checked)."""
    end = packet.find(PACKET_END, 0, _MAX_HEADER)
    if end < 0:
        raise BadPacket("no packet header")
    sep = packet.find(PACKET_FIELD, 0, end)
    if sep < 0:
        raise BadPacket("no field separator in the packet header")
    raw_id = packet[:sep]
    if raw_id and not _MESSAGE_ID.match(raw_id):
        raise BadPacket("the message id is not a history id")
    try:
        exclude = packet[sep + 1 : end].decode()
    except UnicodeDecodeError:
        raise BadPacket("the excluded user is not UTF-8") from None
    return Packet(raw_id.decode(), exclude, packet[end + 1 :])


def check_frame(frame: bytes) -> None:
    """Raise :class:`BadPacket` unless ``frame`` is a JSON object with a string ``type``."""
    try:
        decoded = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise BadPacket("the frame is not JSON") from None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("type"), str):
        raise BadPacket("the frame is not an object with a type")


def packet_id(packet: bytes) -> str:
    """The message id of a packet that :func:`unpack` accepted before (no checks)."""
    return packet[: packet.index(PACKET_FIELD)].decode()
