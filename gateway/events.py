"""What goes into a :class:`~gateway.session.Session`: events, the answers to its effects included.

A session never waits on anything: when it needs the broker it returns an effect that asks
for it (``LookUpBot``, ``OpenRoom``, ``Append``, ...: :mod:`gateway.effects`), and the
connection that carries the effect out feeds the answer back as the event named in the
effect's docstring, or as ``Failed`` with the error the client must see. Plain data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from gateway.effects import Append, CancelReply, ChangeBot, CheckToken, Effect, LookUpBot, LookUpRequest, OpenRoom
from shared.errors import ChatError
from shared.models import Bot, ReplyInFlight

if TYPE_CHECKING:
    from gateway.principal import Principal


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


@dataclass(frozen=True, slots=True)
class BotFound:
    """Answer to ``LookUpBot``; ``bot`` is None when there is no such bot."""

    request: LookUpBot
    bot: Bot | None
    members: frozenset[str]


@dataclass(frozen=True, slots=True)
class RoomOpened:
    """Answer to ``OpenRoom``: subscribed, present, the history the join asked for, replies in flight."""

    request: OpenRoom
    members: list[str]
    member_count: int
    first_here: bool  # the user's first connection in the room: the others hear of it
    replay: list[tuple[str, bytes]]  # (message id, message frame), oldest first
    last_id: str | None
    recovered: bool
    streams: list[ReplyInFlight] = field(default_factory=list)
    bot: Bot | None = None  # the bot as read after the subscribe (None: as the access check read it)


class RequestState(Enum):
    """Where the bot is with one user message."""

    WAITING = "waiting"  # queued, not started
    RUNNING = "running"  # a worker is answering it
    ENDED = "ended"  # answered, failed or cancelled
    UNKNOWN = "unknown"  # no such message, or not one a bot answers


@dataclass(frozen=True, slots=True)
class RequestFound:
    """Answer to ``LookUpRequest``: who sent the message, its bot, and where the reply is."""

    request: LookUpRequest
    bot: Bot | None
    sender: str | None
    state: RequestState


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Answer to ``CancelReply``: the workers were told (or the request left the queue)."""

    request: CancelReply


@dataclass(frozen=True, slots=True)
class Stored:
    """Answer to ``Append``."""

    request: Append
    id: str
    ts: int
    queued: bool
    duplicate: bool = False  # a resend with a client id already stored: nothing was published now


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
    | RequestFound
    | Cancelled
    | Failed
)
