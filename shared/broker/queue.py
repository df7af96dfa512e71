"""Bot inboxes and the leases that decide which worker serves a bot.

Every bot has an inbox stream of requests (one per user message) read through one consumer
group, so a request delivered to a worker stays *pending* until that worker acknowledges it.
A worker that dies leaves its requests pending; once they have been idle for the visibility
timeout, the next worker serving the bot reclaims them, and each delivery counts as an attempt.
Acknowledged requests are deleted, so an inbox holds exactly the requests not yet answered.

A lease (a key with an expiry holding the worker's name) makes one worker at a time serve a
bot: that is what keeps a bot's requests strictly in order. Workers also register themselves
with a heartbeat so they can split the running bots evenly.

Three interfaces with one job each: :class:`BotQueue` (the inboxes), :class:`BotLeases` and
:class:`WorkerRoster` (live workers and the "bots changed" notice). Each has an in-memory
implementation (``memory_queue``, ``memory_workers``: one process) and a Redis one
(``redis_queue``, ``redis_workers``); all pass ``tests/broker/test_queue_contract.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson


class GroupMissing(Exception):
    """A bot's inbox or consumer group is gone (the bot was deleted): refresh the bots and retry."""


@dataclass(frozen=True, slots=True)
class Request:
    """One user message waiting for a bot's answer, as delivered to a worker."""

    bot: str
    entry_id: str  # position in the inbox; what ack and dead_letter name
    message_id: str  # the user message's id in the room history; the reply's reply_to
    text: str
    sender: dict[str, Any]  # the message's ``from``
    ts: int  # unix ms of the message
    attempts: int  # deliveries so far, this one included
    frame: bytes = field(repr=False, default=b"")  # the message frame as queued, kept for dead letters
    problem: str | None = None  # why the entry cannot be handled (malformed); dead-letter it

    def next_attempt(self) -> Request:
        return replace(self, attempts=self.attempts + 1)


def decode_request(bot: str, entry_id: str, fields: Mapping[bytes, bytes], attempts: int) -> Request:
    """Build a request from inbox fields ``m`` (message id) and ``f`` (message frame JSON).

    Never raises: an entry that cannot be read comes back with ``problem`` set.
    """
    message_id = fields.get(b"m", b"").decode(errors="replace")
    frame = fields.get(b"f", b"")
    try:
        body = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return _malformed(bot, entry_id, message_id, attempts, frame, "the queued message is not valid JSON")
    if not isinstance(body, dict):
        return _malformed(bot, entry_id, message_id, attempts, frame, "the queued message is not an object")
    text, sender, ts = body.get("text"), body.get("from"), body.get("ts")
    if not message_id or not isinstance(text, str) or not isinstance(sender, dict) or not isinstance(ts, int):
        return _malformed(bot, entry_id, message_id, attempts, frame, "the queued message lacks id, text, from or ts")
    return Request(bot, entry_id, message_id, text, sender, ts, attempts, frame)


def _malformed(bot: str, entry_id: str, message_id: str, attempts: int, frame: bytes, problem: str) -> Request:
    return Request(bot, entry_id, message_id, "", {}, 0, attempts, frame, problem)


@dataclass(frozen=True, slots=True)
class Backlog:
    """How far behind a bot is."""

    waiting: int  # requests not answered yet: never delivered plus pending
    pending: int  # delivered to a worker and not acknowledged
    oldest_age: float  # seconds since the oldest unanswered request was queued; 0 when none


@dataclass(frozen=True, slots=True)
class DeadLetter:
    entry_id: str  # position in the dead-letter stream
    message_id: str
    reason: str
    attempts: int
    frame: bytes = field(repr=False)


class BotQueue(Protocol):
    """Per-bot request inboxes read through one consumer group: a bot's queue of requests."""

    async def ensure_group(self, bot: str) -> None:
        """Create the bot's inbox and consumer group if missing; requests queued before are kept."""

    async def enqueue(self, bot: str, message_id: str, frame: bytes) -> str:
        """Queue a request exactly as a request append to history does; returns the entry id."""

    async def read(self, consumer: str, bots: Sequence[str], *, block: float) -> list[Request]:
        """Deliver to ``consumer`` the oldest new request of each bot, at most one per bot.

        Waits up to ``block`` seconds when none is there, and returns early (possibly with
        nothing) after :meth:`wake`. Raises GroupMissing when a bot's group is gone.
        """

    async def wake(self) -> None:
        """Make a :meth:`read` of this queue that is waiting now (or the next one) return at once."""

    async def pending(self, bot: str) -> int:
        """Requests of the bot delivered to any worker and not acknowledged."""

    async def reclaim(self, consumer: str, bot: str, *, min_idle: float, count: int = 1) -> list[Request]:
        """Move to ``consumer`` the oldest pending requests idle at least ``min_idle`` seconds.

        Each reclaim counts as a delivery: ``attempts`` tells how many there were. Pending
        entries whose message was deleted are dropped.
        """

    async def retry(self, consumer: str, request: Request) -> Request | None:
        """Count another attempt of a pending request held by ``consumer``; None when it is gone."""

    async def release(self, consumer: str, request: Request) -> None:
        """Give back a request taken but not handled: the bot's next server reclaims it at once.

        It stays pending (its place in the bot's order is kept) but looks idle for a long time;
        the attempt count is unchanged.
        """

    async def ack(self, request: Request, *, reply_stored: bool = False, announce: bytes | None = None) -> bool:
        """The request is answered: forget it. True when it was pending until this call.

        With ``reply_stored`` the request is acknowledged only if a reply to it is in history (what
        :meth:`answered` tells), checked in the same atomic step; otherwise nothing changes and the
        answer is False. That lets a worker send the ack right behind the reply's append, in the
        same round trip, without ever acknowledging a request whose reply was not stored.

        ``announce`` is a packet published to the bot's room in that same step, only when the
        request was acknowledged by this call: ``status done`` goes out once, and never before the ack.
        """

    async def dead_letter(self, request: Request, reason: str) -> None:
        """Move the request to the bot's dead-letter stream (with the reason) and forget it."""

    async def dead_letters(self, bot: str, limit: int = 100) -> list[DeadLetter]:
        """The oldest dead-lettered requests of the bot."""

    async def backlog(self, bot: str) -> Backlog: ...

    async def answered(self, bot: str, message_id: str) -> bool:
        """True when a reply to the message is already in history (a reclaimed request was answered)."""

    async def prune_consumers(self, bot: str, keep: str) -> None:
        """Forget consumers of the bot's group other than ``keep`` that hold no pending request."""

    async def close(self) -> None: ...


class BotLeases(Protocol):
    """One worker at a time serves a bot: the holder of its lease, a name with an expiry."""

    async def claim(self, bot: str, owner: str, ttl: float) -> bool:
        """Become the bot's only server for ``ttl`` seconds; True also when ``owner`` already is."""

    async def renew(self, bot: str, owner: str, ttl: float) -> bool:
        """Extend the lease if ``owner`` still holds it; False means it was lost."""

    async def release(self, bot: str, owner: str) -> bool:
        """Give the lease up if ``owner`` still holds it."""

    async def owner(self, bot: str) -> str | None: ...


class WorkerRoster(Protocol):
    """The live workers (by heartbeat), and the notice that the set of bots to run changed."""

    async def heartbeat(self, worker: str, ttl: float) -> int:
        """Record that ``worker`` is alive for ``ttl`` seconds; return how many workers are."""

    async def leave(self, worker: str) -> None:
        """Remove ``worker`` from the live workers at once."""

    async def wait_bots_changed(self, timeout: float) -> bool:
        """Wait until the set of wanted-running bots may have changed; False after ``timeout``."""

    async def notify_bots_changed(self) -> None:
        """Tell every worker to look at the bots again (e.g. after leases were released)."""

    async def close(self) -> None: ...


RELEASED_IDLE = 365 * 24 * 3600.0  # seconds a released request appears idle: past any visibility timeout


def id_key(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream entry id."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
