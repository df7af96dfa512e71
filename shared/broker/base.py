"""The broker interfaces: the only way gateway and workers reach shared state.

Each interface has an in-memory implementation (single process) and a Redis one, and both pass
the one contract suite in ``tests/broker``. Data flows one way: gateways append user messages
(which also queues them for the bot) and listen to room events; workers consume requests and
append replies; both publish ephemeral events (typing, presence, statuses) that skip history.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

from shared.models import Bot, BotStatus, ReplyInFlight
from shared.packets import StreamPosition

EventHandler = Callable[[str, bytes], None]
"""Called with (room, packet) for every event of a subscribed room; must not block.

Whatever it raises is logged (rate-limited, with the room only) and that event is dropped; the
fan-out goes on delivering. Both implementations keep this, and the contract suite checks it."""


class BrokerUnavailable(Exception):
    """The shared store cannot be reached; the caller tells the client ``unavailable``."""


class InboxFull(Exception):
    """The bot already has as many waiting requests as it may hold; nothing was stored."""


class ReplyCancelled(Exception):
    """The request was cancelled, so its reply was not stored (see ``History.append``)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Result of a history append."""

    id: str
    ts: int
    duplicate: bool = False  # an earlier append with the same reply_to exists; nothing was published
    queued: bool = False  # the request waits because the bot is not running


@dataclass(frozen=True, slots=True)
class ClientId:
    """A user's own id of a message they send: a resend with it is not stored again."""

    user: str
    id: str


@dataclass(frozen=True, slots=True)
class Latest:
    """Where a request is in its bot's inbox and who sent it, to find newer messages of that user."""

    entry_id: str
    user: str


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A user message as a request to the room's bot."""

    sender: str | None  # the user who sent it; None when there is no such user message
    answered: bool  # a reply is stored, or it was cancelled or failed for good
    streaming: bool  # a reply to it is being written now
    cancelled: bool  # a cancel was asked for


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[tuple[str, bytes]]  # (message id, message frame), oldest first
    last_id: str | None  # newest id in the room, whether or not it is in ``entries``
    complete: bool  # with ``since``: every message after it is in ``entries``


@dataclass(frozen=True, slots=True)
class PresenceChange:
    changed: bool  # the user's first connection joined / last connection left
    members: list[str]  # users present now, at most the presence limit
    count: int  # users present now


class FanOut(Protocol):
    """Room events across nodes. A node subscribes to a room while it has local members."""

    def set_handler(self, handler: EventHandler) -> None:
        """The one handler of every event of every subscribed room (see :data:`EventHandler`)."""

    def set_gap_handler(self, handler: Callable[[], None]) -> None:
        """``handler`` is called when events may have been missed: the link to Redis came back, its
        read loop was restarted, or cluster channels moved. Every subscription is in place again then."""

    async def subscribe(self, room: str) -> None: ...

    async def unsubscribe(self, room: str) -> None: ...

    async def publish(self, room: str, packet: bytes) -> None:
        """Send an ephemeral event (not kept in history) to every node holding the room."""

    def subscriptions(self) -> int: ...


class History(Protocol):
    """Per-room message history; an append is stored and published in one step."""

    async def append(
        self,
        room: str,
        tail: bytes,
        *,
        request: bool = False,
        reply_to: str | None = None,
        client_id: ClientId | None = None,
        cancelled: bool = False,
    ) -> Appended:
        """Store a message (``tail`` from :func:`shared.protocol.message_tail`) and publish it.

        ``request=True`` also queues it in the bot's inbox and, when the bot is not running,
        returns queued=True and marks the published frame ``"queued": true`` (one frame, not a
        second ``status`` frame to every member). ``reply_to`` makes the append idempotent per request: a
        second reply to the same message returns the first one with ``duplicate=True``, and the
        reply's stream (see :class:`Replies`) ends with it. ``client_id`` (the sender and the id
        the sender's client gave) does the same for a user's message within the client-id window.
        Raises InboxFull, storing nothing, when ``request`` and the bot's inbox is full, and
        ReplyCancelled when ``reply_to`` was cancelled, unless ``cancelled`` says this is the
        cancelled reply itself (the text written until the cancel).
        """

    async def read_after(self, room: str, since: str, limit: int) -> HistoryPage:
        """Messages after ``since``; ``complete`` is false when history no longer reaches back to it."""

    async def read_latest(self, room: str, limit: int) -> HistoryPage: ...

    async def read_range(self, room: str, after: str, limit: int) -> HistoryPage:
        """The first ``limit`` messages after ``after``, for paging forward through history."""

    async def last_id(self, room: str) -> str | None: ...


class Presence(Protocol):
    """Who is in a room, counted per user, with entries that expire unless refreshed."""

    async def join(self, room: str, user: str, connection: str) -> PresenceChange: ...

    async def leave(self, room: str, user: str, connection: str) -> PresenceChange: ...

    async def refresh(self, entries: list[tuple[str, str, str]]) -> None:
        """Keep (room, user, connection) entries alive for another TTL."""

    async def expire(self, room: str) -> list[str]:
        """Drop expired connections; return users who are gone as a result."""


class BotRegistry(Protocol):
    """Bots (= rooms), their owners and members, and their status."""

    async def create(self, bot: Bot) -> None: ...

    async def get(self, bot_id: str) -> Bot | None: ...

    async def members(self, bot_id: str) -> set[str]: ...

    async def list_for(self, user: str, *, is_admin: bool) -> list[Bot]: ...

    async def delete(self, bot_id: str) -> None: ...

    async def add_member(self, bot_id: str, user: str) -> None: ...

    async def remove_member(self, bot_id: str, user: str) -> None: ...

    async def set_status(
        self, bot_id: str, status: BotStatus, error: str | None = None, *, expect: Collection[BotStatus] = ()
    ) -> Bot | None:
        """Record the status, tell workers when the wanted state changed, and publish ``bot_status``.

        With ``expect``, only a bot now in one of those statuses changes; otherwise (or when the bot
        does not exist) nothing happens and None is returned.
        """

    async def running(self) -> set[str]:
        """Bots whose wanted state is running (status starting or running)."""


class Revocations(Protocol):
    """Users whose tokens issued before a moment are refused everywhere."""

    async def revoke(self, user: str, at: float, ttl: float) -> None:
        """Refuse ``user``'s tokens issued before ``at`` (unix seconds) for ``ttl`` seconds."""

    async def revoked_at(self, user: str) -> float | None: ...


class Replies(Protocol):
    """Bot replies while they are written, and cancels of them.

    A reply in progress is kept (bounded, expiring) with its text so far and its position, so a
    client that joins mid-reply gets the text so far and then the live deltas after it. The
    final append with ``reply_to`` ends it in the same step that stores the reply.
    """

    async def push(self, room: str, position: StreamPosition, piece: str, packet: bytes) -> bool:
        """Add ``piece`` at ``position`` and publish ``packet`` to the room, in one step.

        A position of a later attempt than the one kept starts the reply again (``seq`` 0 and an
        empty piece announce that). Returns False, doing nothing, when a later attempt owns it or
        the request was cancelled.
        """

    async def in_flight(self, room: str) -> list[ReplyInFlight]:
        """Every reply being written in the room, as it stands now."""

    async def clear(self, room: str, reply_to: str) -> None:
        """Forget a reply in progress that ends without a stored message (failed, cancelled early)."""

    async def request(self, room: str, message_id: str) -> RequestInfo:
        """Who sent ``message_id`` and where its reply is."""

    async def cancel(self, room: str, message_id: str, *, announced: bool) -> None:
        """Mark the request cancelled and tell every worker; ``announced``: the room was told already."""

    async def start(self, room: str, message_id: str, packet: bytes, *, latest_of: Latest | None = None) -> str | None:
        """A worker starts on a request: publish ``packet`` (its ``processing`` status) to the room
        unless the request was cancelled (then return the cancel mark instead, publishing nothing)
        or, with ``latest_of``, a newer message of the same user waits in the bot's inbox (then
        return ``"superseded"``)."""

    async def cancel_mark(self, room: str, message_id: str) -> str | None:
        """``"announce"`` when the request was cancelled and the room not yet told, ``"announced"``
        when it was, None when it was not cancelled."""

    def on_cancel(self, handler: Callable[[str, str], None]) -> None:
        """Call ``handler(room, message_id)`` in this process for every cancel asked anywhere."""
