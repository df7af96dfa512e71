"""The frames a client sends, as types. No I/O.

Each frame is a frozen dataclass: :func:`shared.protocol.decode_client_frame` builds it once the
fields are checked, and the session matches on it. ``bot.start`` and ``bot.stop`` are one class
told apart by ``action``. The frames sent to clients are typed in :mod:`shared.server_frames`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Join:
    room: str
    since: str | None
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class Leave:
    room: str
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class SendMessage:
    room: str
    text: str
    ref: str | int | None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the bot's reply to ``message`` (the id of the user message it answers)."""

    room: str
    message: str
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class Typing:
    room: str
    state: bool
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class BotCommand:
    bot: str
    action: str  # "start" or "stop"
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class Ping:
    ref: str | int | None


@dataclass(frozen=True, slots=True)
class Auth:
    token: str
    ref: str | int | None


ClientFrame = Join | Leave | SendMessage | Cancel | Typing | BotCommand | Ping | Auth
