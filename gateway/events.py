"""What goes into a :class:`~gateway.session.Session` (events) and what comes out (effects).

A session never waits on anything: when it needs the broker it returns an effect that asks
for it (``LookUpBot``, ``OpenRoom``, ``Append``, ...), and the connection that carries the
effect out feeds the answer back as the event named in the effect's docstring, or as
``Failed`` with the error the client must see. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from shared.errors import ChatError
from shared.models import Bot

if TYPE_CHECKING:
    from gateway.principal import Principal

Ref = str | int | None


# -- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Opened:
    """The WebSocket was accepted."""


@dataclass(frozen=True, slots=True)
class Received:
    """One text frame from the client."""

    text: str


@dataclass(frozen=True, slots=True)
class ReceivedBinary:
    """A binary frame: the protocol has none."""


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """The time the session asked for with ``Schedule`` has come."""


@dataclass(frozen=True, slots=True)
class Evicted:
    """An owner or an admin removed the user from a room (a control operation)."""

    room: str


@dataclass(frozen=True, slots=True)
class Revoked:
    """The user's tokens were revoked (a control operation)."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The socket is gone; the session lets go of its rooms."""


class Purpose(Enum):
    """Why a session looked a bot up: decides what the answer leads to."""

    JOIN = "join"
    MANAGE = "manage"  # bot.start / bot.stop
    REFUSE = "refuse"  # the room was not joined: only the error to send is left to find out


@dataclass(frozen=True, slots=True)
class BotFound:
    """Answer to ``LookUpBot``; ``bot`` is None when there is no such bot."""

    request: LookUpBot
    bot: Bot | None
    members: frozenset[str]


@dataclass(frozen=True, slots=True)
class RoomOpened:
    """Answer to ``OpenRoom``: subscribed, present, and the history the join asked for."""

    request: OpenRoom
    members: list[str]
    member_count: int
    first_here: bool  # the user's first connection in the room: the others hear of it
    replay: list[tuple[str, bytes]]  # (message id, message frame), oldest first
    last_id: str | None
    recovered: bool


@dataclass(frozen=True, slots=True)
class Stored:
    """Answer to ``Append``."""

    request: Append
    id: str
    ts: int
    queued: bool


@dataclass(frozen=True, slots=True)
class BotChanged:
    """Answer to ``ChangeBot``: the bot as it is now."""

    request: ChangeBot
    bot: Bot


@dataclass(frozen=True, slots=True)
class TokenChecked:
    """Answer to ``CheckToken``: the token is valid and not revoked."""

    request: CheckToken
    principal: Principal


@dataclass(frozen=True, slots=True)
class Failed:
    """An effect that asked for an answer failed; ``error`` is what the client is told."""

    request: Effect
    error: ChatError


Event = (
    Opened
    | Received
    | ReceivedBinary
    | DeadlineReached
    | Evicted
    | Revoked
    | Closed
    | BotFound
    | RoomOpened
    | Stored
    | BotChanged
    | TokenChecked
    | Failed
)


# -- effects -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    """Send one server frame (JSON bytes) to this client."""

    frame: bytes


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
    """Store a message and publish it (queued for the bot). Answer: ``Stored``."""

    room: str
    tail: bytes
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
)
