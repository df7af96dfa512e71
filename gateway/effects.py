"""What a :class:`~gateway.session.Session` asks for: the effects a connection carries out.

Effects that need the broker get their answer back as the event named in their docstring (see
:mod:`gateway.events`), or as ``Failed``. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from shared.models import Bot

Ref = str | int | None


class Purpose(Enum):
    """Why a session looked a bot up: decides what the answer leads to."""

    JOIN = "join"
    MANAGE = "manage"  # bot.start / bot.stop
    REFUSE = "refuse"  # the room was not joined: only the error to send is left to find out


@dataclass(frozen=True, slots=True)
class Send:
    """Send one server frame (JSON bytes) to this client."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class SendWithCopy:
    """Send ``frame`` (the ack of a stored message) together with the room's copy of that message.

    The room's copy reaches this connection through the room's fan-out a moment later; the two go
    out in one write, which saves a socket write per message. When the copy was written already,
    or does not come soon, the frame goes out on its own: it is never held for long.
    """

    frame: bytes
    room: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Write:
    """Write a room event that is already framed for the WebSocket (see gateway.wire)."""

    framed: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """Feed ``DeadlineReached`` at ``at`` (wall clock, seconds); replaces the previous deadline."""

    at: float


@dataclass(frozen=True, slots=True)
class Count:
    """Add one to a gateway counter (``label`` for the labelled ones)."""

    counter: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class LookUpBot:
    """Read a bot and its members. Answer: ``BotFound``."""

    bot: str
    purpose: Purpose
    ref: Ref
    since: str | None = None  # JOIN: where the client's history ends
    action: str = ""  # MANAGE: "start" or "stop"


@dataclass(frozen=True, slots=True)
class OpenRoom:
    """Subscribe to a room, mark the user present and read history. Answer: ``RoomOpened``."""

    room: str
    since: str | None
    bot: Bot
    ref: Ref


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """Stop receiving a room's events here and tell the room when the user's last connection left."""

    room: str


@dataclass(frozen=True, slots=True)
class SetTyping:
    """The user typing or not in a room: announced when it changes, expired by the node."""

    room: str
    state: bool


@dataclass(frozen=True, slots=True)
class Announce:
    """Publish an event that history does not keep to the other users of a room."""

    room: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class Append:
    """Store a message and publish it (queued for the bot). Answer: ``Stored``.

    With ``client_id``, a message the same client id already stored is not stored again: the
    answer is the first one's id.
    """

    room: str
    tail: bytes
    ref: Ref
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class LookUpRequest:
    """Find a user message, its sender and where the bot is with it. Answer: ``RequestFound``."""

    room: str
    message: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class CancelReply:
    """Stop the bot's reply to ``message``, or take the message out of the queue. Answer: ``Cancelled``."""

    room: str
    message: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class ChangeBot:
    """Ask the workers to start or stop a bot. Answer: ``BotChanged``."""

    bot: Bot
    action: str
    ref: Ref


@dataclass(frozen=True, slots=True)
class CheckToken:
    """Verify a fresh token and check it is not revoked. Answer: ``TokenChecked``."""

    token: str
    ref: Ref


Effect = (
    Send
    | SendWithCopy
    | Write
    | Close
    | Schedule
    | Count
    | LookUpBot
    | OpenRoom
    | LeaveRoom
    | SetTyping
    | Announce
    | Append
    | ChangeBot
    | CheckToken
    | LookUpRequest
    | CancelReply
)
