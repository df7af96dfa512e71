"""Packets: how a room event travels between processes over pub/sub. Pure; no I/O.

A packet is ``<message id> US <excluded user> [US <stream position>] [US c=<connection>] LF <frame>``.
The header lets a node merge replayed history with live events by id, merge a streamed reply's
snapshot with its live deltas by position, skip the sender's own typing and presence frames, and
skip the one connection that sent a message (it gets its copy together with its ``ack``, in one
write); the frame after the newline is exactly what clients receive. (A node of an earlier
release reads the optional fields as part of the excluded user, matches nobody, and delivers as
before.)

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
_CONNECTION = re.compile(rb"[A-Za-z0-9_\-]{1,64}\Z")  # connection ids are URL-safe base64
CONNECTION_MARK = b"c="
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
    exclude_connection: str = ""  # the connection that sent the message: it has its copy already


def pack(
    frame: bytes,
    *,
    message_id: str = "",
    exclude_user: str = "",
    position: StreamPosition | None = None,
    exclude_connection: str = "",
) -> bytes:
    """Wrap a frame for pub/sub. ``exclude_user``'s connections, and ``exclude_connection``, do not receive it."""
    header = [message_id.encode(), PACKET_FIELD, exclude_user.encode()]
    if position is not None:
        header += [PACKET_FIELD, f"{position.reply_to}/{position.attempt}/{position.seq}".encode()]
    if exclude_connection:
        header += [PACKET_FIELD, CONNECTION_MARK, exclude_connection.encode()]
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
    position, connection = None, ""
    for extra in fields[1:]:
        if extra.startswith(CONNECTION_MARK):
            connection = _connection(extra[len(CONNECTION_MARK) :])
        else:
            position = _position(extra)
    try:
        exclude = fields[0].decode()
    except UnicodeDecodeError:
        raise BadPacket("the excluded user is not UTF-8") from None
    return Packet(raw_id.decode(), exclude, packet[end + 1 :], position, connection)


def _connection(raw: bytes) -> str:
    if not _CONNECTION.match(raw):
        raise BadPacket("the excluded connection is not a connection id")
    return raw.decode()


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
