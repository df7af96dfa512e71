"""One timer per node for what every connection waits on: heartbeats and token deadlines.

Every ``heartbeat / 2`` seconds the sweep looks at each connection once. A connection that sent
nothing for two sweeps (``heartbeat`` seconds, give or take one sweep) gets a ping; one that still
sent nothing a sweep later (``heartbeat / 2`` seconds for the pong) is given up on. Anything the
peer sends counts, the pong included: the connection only sets ``idle = 0``, no clock read and
no timer per frame.

Token deadlines are kept as a number on each connection. A sweep gives a precise timer only to
the connections whose deadline comes before the next sweep (a token expires once per connection;
nearly all of them are hours away), so an idle connection holds no timer at all.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.connection import Connection

PING_AFTER = 2  # sweeps without a byte from the peer before it is pinged
GIVE_UP_AFTER = 3  # sweeps without a byte: the ping went unanswered for one sweep
NOT_WATCHED = -1  # ``idle`` of a connection whose heartbeats someone else sends (aiohttp's, with compression)


class Swept(Protocol):
    """What the sweep needs of a connection."""

    idle: int  # sweeps since the peer last sent anything; NOT_WATCHED for no heartbeat here
    deadline: float  # wall-clock time the connection must hear about (its token's expiry); inf for none

    def ping(self) -> None:
        """Send a ping."""

    def unresponsive(self) -> None:
        """The ping went unanswered: give up on the connection."""

    def deadline_reached(self) -> None:
        """``deadline`` has come."""


class Sweep:
    """The heartbeats and deadlines of the connections on one node, on one repeating timer.

    ``add`` a connection when it opens and ``discard`` it when it ends; ``schedule`` sets its
    deadline. The timer runs only while there are connections, so a node without any leaves
    nothing scheduled on the loop.
    """

    def __init__(
        self,
        heartbeat: float,
        spawn: Callable[[Coroutine[Any, Any, Any]], object],
        ended: Callable[[Connection, str], Coroutine[Any, Any, None]],
    ) -> None:
        self.interval = heartbeat / 2
        self._members: set[Swept] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0  # wall-clock time of the next sweep
        self._soon: dict[Swept, asyncio.TimerHandle] = {}  # deadlines before the next sweep, timed precisely
        # what the node does when a connection it owns ends: forget it, in a task the node owns
        self.spawn = spawn
        self.ended = ended

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: Swept) -> None:
        self._members.add(member)
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._next = time.time() + self.interval
            self._timer = loop.call_later(self.interval, self._sweep)

    def discard(self, member: Swept) -> None:
        self._members.discard(member)
        timer = self._soon.pop(member, None)
        if timer is not None:
            timer.cancel()
        if not self._members and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def schedule(self, member: Swept, at: float) -> None:
        """``member.deadline_reached()`` at wall-clock time ``at`` (its previous deadline dropped)."""
        member.deadline = at
        timer = self._soon.pop(member, None)
        if timer is not None:
            timer.cancel()
        if member in self._members and at <= self._next + self.interval / 4:
            self._time(member, time.time())

    def _time(self, member: Swept, now: float) -> None:
        loop = asyncio.get_running_loop()
        self._soon[member] = loop.call_later(max(0.0, member.deadline - now), self._due, member)

    def _due(self, member: Swept) -> None:
        self._soon.pop(member, None)
        if member in self._members:
            member.deadline_reached()

    def _sweep(self) -> None:
        now = time.time()
        self._next = now + self.interval
        soon = self._next + self.interval / 4  # a little past the next sweep: a late timer changes nothing
        for member in list(self._members):
            if member.deadline <= soon and member not in self._soon and not math.isinf(member.deadline):
                self._time(member, now)
            idle = member.idle
            if idle == NOT_WATCHED:
                continue
            member.idle = idle = idle + 1
            if idle == PING_AFTER:
                member.ping()
            elif idle >= GIVE_UP_AFTER:
                member.unresponsive()
        if self._members:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._sweep)
        else:
            self._timer = None
