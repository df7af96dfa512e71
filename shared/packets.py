"""Packets: how a room event travels between processes over pub/sub. Pure; no I/O.

A packet is ``<message id> US <excluded user> [US <stream position>] LF <frame>``. The header lets
a node merge replayed history with live events by id, merge a streamed reply's snapshot with its
live deltas by position, and skip the sender's own typing and presence frames; the frame after
the newline is exactly what clients receive. (A node of an earlier release reads a position as
part of the excluded user, matches nobody, and delivers the delta as before.)

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
_POSITION = re.compile(rb"([0-9]{1,15}-[0-9]{1,10})/([0-9]{1,6})/([0-9]{1,9})\Z")
_MAX_HEADER = 512  # an id (26 bytes) plus a user id (at most 128 characters of UTF-8): far below this


class BadPacket(ValueError):
    """Bytes on a pub/sub channel that are not a packet this version can read."""


class StreamPosition(NamedTuple):
    """Where a delta is in a streamed reply: the reply's ``seq``-th piece in ``attempt``."""

    reply_to: str
    attempt: int
    seq: int

    def after(self, other: StreamPosition) -> bool:
        """True when this piece comes after ``other``'s in the same reply (a later attempt included)."""
        return (self.attempt, self.seq) > (other.attempt, other.seq)


class Packet(NamedTuple):
    message_id: str  # the history id, or "" for an event that is not kept
    exclude_user: str  # this user's connections do not receive the frame, or ""
    frame: bytes  # exactly what clients receive
    position: StreamPosition | None = None  # a delta's place in its reply


def pack(
    frame: bytes,
    *,
    message_id: str = "",
    exclude_user: str = "",
    position: StreamPosition | None = None,
) -> bytes:
    """Wrap a frame for pub/sub. ``exclude_user``'s connections do not receive it."""
    header = [message_id.encode(), PACKET_FIELD, exclude_user.encode()]
    if position is not None:
        header += [PACKET_FIELD, f"{position.reply_to}/{position.attempt}/{position.seq}".encode()]
    return b"".join((*header, PACKET_END, frame))


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
    fields = packet[sep + 1 : end].split(PACKET_FIELD)
    if len(fields) > 2:
        raise BadPacket("too many fields in the packet header")
    position = _position(fields[1]) if len(fields) == 2 else None
    try:
        exclude = fields[0].decode()
    except UnicodeDecodeError:
        raise BadPacket("the excluded user is not UTF-8") from None
    return Packet(raw_id.decode(), exclude, packet[end + 1 :], position)


def _position(raw: bytes) -> StreamPosition:
    match = _POSITION.match(raw)
    if match is None:
        raise BadPacket("the stream position is not <history id>/<attempt>/<seq>")
    return StreamPosition(match[1].decode(), int(match[2]), int(match[3]))


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
