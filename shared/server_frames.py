"""The frames a gateway or a worker sends to clients, as types. No I/O.

Each frame is a frozen dataclass whose fields are the frame's keys (``from`` is spelled
``sender``, a Python keyword otherwise); :func:`encode` turns it into the JSON bytes that go on
the wire, key order as documented in docs/protocol.md. Message frames are not here: their id is
only known once history stored them (see :func:`shared.protocol.compose_message`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import orjson

from shared.errors import ErrorCode

Ref = str | int | None


@dataclass(frozen=True, slots=True)
class Welcome:
    protocol: int
    session: str
    user: str
    node: str
    heartbeat: float


@dataclass(frozen=True, slots=True)
class Joined:
    room: str
    bot: dict[str, Any]
    members: list[str]
    member_count: int
    last_id: str | None
    recovered: bool
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Left:
    room: str
    reason: str | None = None  # "removed" when an owner or an admin took the user out
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Ack:
    id: str
    ts: int
    queued: bool = False  # the bot is not running: the request waits for it
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Pong:
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class AuthOk:
    exp: int
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class BotStatusReply:
    bot: str
    status: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class BotStatusEvent:
    """A bot's status changed; every member of its room hears it."""

    bot: str
    status: str
    ts: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """Where a worker is with one request (``queued``, ``thinking``, ``done``, ...)."""

    room: str
    message_id: str
    state: str
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """The next piece of a bot's reply while it is being written: the ``seq``-th of ``attempt``."""

    room: str
    reply_to: str
    text: str
    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class Stream:
    """A reply in progress as it stands: its text through piece ``seq`` of ``attempt``.

    Sent to a joining client for every reply in flight (then the deltas after ``seq``), and to
    the room when a new attempt starts the reply again (``seq`` 0, no text).
    """

    room: str
    reply_to: str
    text: str
    attempt: int
    seq: int


@dataclass(frozen=True, slots=True)
class CancelOk:
    """The cancel was accepted; the reply ends ``cancelled`` (or never starts)."""

    room: str
    message: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class TypingEvent:
    room: str
    sender: dict[str, Any]
    state: bool


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    room: str
    user: str
    event: str  # "join" or "leave"


@dataclass(frozen=True, slots=True)
class Reconnect:
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    message: str
    ref: Ref = None


@dataclass(frozen=True, slots=True)
class Probe:
    """Not for clients: what a node publishes on its own probe channel to prove pub/sub works."""

    node: str
    seq: int


ServerFrame = (
    Welcome
    | Joined
    | Left
    | Ack
    | Pong
    | AuthOk
    | BotStatusReply
    | BotStatusEvent
    | Status
    | Delta
    | Stream
    | CancelOk
    | TypingEvent
    | PresenceEvent
    | Reconnect
    | Error
    | Probe
)
_TYPES: dict[type, str] = {
    Welcome: "welcome",
    Joined: "joined",
    Left: "left",
    Ack: "ack",
    Pong: "pong",
    AuthOk: "auth_ok",
    BotStatusReply: "bot_status",
    BotStatusEvent: "bot_status",
    Status: "status",
    Delta: "delta",
    Stream: "stream",
    CancelOk: "cancel_ok",
    TypingEvent: "typing",
    PresenceEvent: "presence",
    Reconnect: "reconnect",
    Error: "error",
    Probe: "probe",
}
_OPTIONAL = {
    "reason": None,
    "queued": False,
    "ref": None,
    "detail": None,
    "error": None,
}  # keys left out while they hold these values
_RENAMED = {"sender": "from"}


# field name -> wire key of every frame type, computed once: encoding runs for every frame sent
_KEYS = {kind: tuple((f.name, _RENAMED.get(f.name, f.name)) for f in fields(kind)) for kind in _TYPES}


def wire(frame: ServerFrame) -> dict[str, Any]:
    """The frame as the JSON object clients receive."""
    body: dict[str, Any] = {"type": _TYPES[type(frame)]}
    for name, key in _KEYS[type(frame)]:
        value = getattr(frame, name)
        if name in _OPTIONAL and value == _OPTIONAL[name]:
            continue
        body[key] = value.value if isinstance(value, ErrorCode) else value
    return body


def encode(frame: ServerFrame) -> bytes:
    """The frame's JSON bytes, as written to every socket that receives it."""
    return orjson.dumps(wire(frame))
