"""The per-node sweep: pings, giving up on silent connections, and token deadlines, on one timer."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from gateway.heartbeat import NOT_WATCHED, Sweep
from tests.procs import scaled


class Member:
    """A connection as the sweep sees it, recording what happened to it."""

    def __init__(self, *, answers: bool = False, watched: bool = True) -> None:
        self.idle = 0 if watched else NOT_WATCHED
        self.deadline = math.inf
        self.answers = answers
        self.pings = 0
        self.pinged = asyncio.Event()
        self.gone = asyncio.Event()
        self.due = asyncio.Event()

    def ping(self) -> None:
        self.pings += 1
        self.pinged.set()
        if self.answers:
            self.idle = 0  # the pong is data

    def unresponsive(self) -> None:
        self.gone.set()

    def deadline_reached(self) -> None:
        self.due.set()


def sweep(heartbeat: float = 0.1) -> Sweep:
    async def ended(connection: Any, reason: str) -> None:
        return None

    return Sweep(heartbeat, asyncio.ensure_future, ended)


async def test_a_silent_member_is_pinged_then_given_up() -> None:
    """No answer to the ping within a sweep: the member is given up on."""
    s = sweep()
    silent = Member()
    s.add(silent)
    await asyncio.wait_for(silent.pinged.wait(), scaled(2))
    await asyncio.wait_for(silent.gone.wait(), scaled(2))
    s.discard(silent)
    assert len(s) == 0


async def test_a_member_that_answers_is_kept_and_an_unwatched_one_never_pinged() -> None:
    """Answered pings keep a member; a member without heartbeats here is never pinged or dropped."""
    s = sweep()
    alive, unwatched, silent = Member(answers=True), Member(watched=False), Member()
    for member in (alive, unwatched, silent):
        s.add(member)
    await asyncio.wait_for(silent.gone.wait(), scaled(2))
    s.discard(silent)
    while alive.pings < 3:
        alive.pinged.clear()
        await asyncio.wait_for(alive.pinged.wait(), scaled(2))
    assert not alive.gone.is_set()
    assert unwatched.pings == 0
    assert not unwatched.gone.is_set()
    s.discard(alive)
    s.discard(unwatched)


async def test_deadlines_fire_on_time_and_discarded_or_moved_ones_do_not() -> None:
    """A deadline fires near its time; a moved deadline fires at the new time; a discarded member never."""
    s = sweep(heartbeat=60)  # sweeps far apart: deadlines must not wait for one
    near, moved, dropped = Member(), Member(), Member()
    for member in (near, moved, dropped):
        s.add(member)
    start = time.time()
    s.schedule(dropped, start + 0.05)
    s.schedule(moved, start + 3600)
    s.schedule(near, start + 0.1)
    s.discard(dropped)
    s.schedule(moved, start + 0.15)
    await asyncio.wait_for(near.due.wait(), scaled(2))
    assert time.time() >= start + 0.1
    await asyncio.wait_for(moved.due.wait(), scaled(2))
    assert not dropped.due.is_set()
    s.discard(near)
    s.discard(moved)


async def test_a_far_deadline_gets_its_timer_from_a_later_sweep() -> None:
    """A deadline past the next sweep holds no timer until a sweep comes close to it."""
    s = sweep(heartbeat=0.2)  # a sweep every 0.1 s
    member = Member(watched=False)
    s.add(member)
    s.schedule(member, time.time() + 0.35)
    await asyncio.wait_for(member.due.wait(), scaled(2))
    s.discard(member)
