"""A test client that survives node crashes, restarts and Redis outages the way a real client must.

It connects to one of several node URLs (round-robin or random on each reconnect), keeps the
last message id of every room, and rejoins with ``since`` after any disconnect. A send counts as
acknowledged only once an ``ack`` for it arrives; a send that got no ack (the connection went
away, or the answer timed out) or got ``unavailable`` is sent again. Every delivered ``message``
is recorded per room in arrival order, and duplicates and order violations are detected by id.

Reconnects are bounded in number and spaced with exponential backoff and full jitter; a
``reconnect`` frame's ``delay_ms`` is honoured (capped). Waiting for deliveries is event driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.procs import scaled

RETRYABLE_ERRORS = frozenset({"unavailable", "internal", "rate_limited"})
EMPTY_ROOM_SINCE = "0-0"  # before every id: replays the whole (kept) history of a room that was empty at first join


def id_key(message_id: str) -> tuple[int, int]:
    """A message id as the (milliseconds, sequence) pair that orders a room's history."""
    ms, seq = message_id.split("-")
    return int(ms), int(seq)


class ConnectionLost(Exception):
    """The connection carrying a request went away before the answer came."""


class ClientGaveUp(Exception):
    """The client used up its reconnect attempts (or a send used up its tries)."""


@dataclass
class RoomLog:
    """What one client saw of one room."""

    messages: list[dict[str, Any]] = field(default_factory=list)  # delivered message frames, in arrival order
    seen: set[str] = field(default_factory=set)
    duplicates: list[str] = field(default_factory=list)  # ids delivered more than once
    disorder: list[tuple[str, str]] = field(default_factory=list)  # (previous id, id) that went backwards
    joins: list[dict[str, Any]] = field(default_factory=list)  # every joined frame, for recovered / last_id
    baseline: str | None = None  # newest id at the first join: later messages are the ones this client must get

    @property
    def last_id(self) -> str | None:
        return self.messages[-1]["id"] if self.messages else self.baseline

    def record(self, frame: dict[str, Any]) -> None:
        message_id = frame["id"]
        if message_id in self.seen:
            self.duplicates.append(message_id)
            return
        if self.messages and id_key(message_id) <= id_key(self.messages[-1]["id"]):
            self.disorder.append((self.messages[-1]["id"], message_id))
        self.seen.add(message_id)
        self.messages.append(frame)

    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages]


@dataclass
class Acked:
    room: str
    text: str
    id: str
    tries: int  # frames sent for this message; above 1 the message may be stored more than once


class ResilientClient:
    """One user's connection that comes back on its own; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: MutableSequence[str],
        token: str,
        rooms: list[str],
        *,
        name: str = "client",
        pick: str = "round_robin",
        max_reconnects: int = 60,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        ack_timeout: float = 5.0,
        max_send_tries: int = 40,
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.urls = urls  # shared with the test, which may add a replacement node or drop a dead one
        self.token = token
        self.name = name
        self.pick = pick
        self.max_reconnects = max_reconnects
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.ack_timeout = ack_timeout
        self.max_send_tries = max_send_tries
        self.rng = rng or random.Random()
        self.rooms = {room: RoomLog() for room in rooms}
        self.acked: list[Acked] = []
        self.resends = 0  # frames sent again after an answer that never came (the first may have been stored)
        self.unavailable = 0  # sends refused with unavailable (not stored, except in the rare case the protocol notes)
        self.connects = 0  # connections that got every room joined
        self.close_codes: list[int | None] = []
        self.nodes: list[str] = []  # welcome.node of each connection
        self.ready = asyncio.Event()  # connected and every room joined: sends may go out
        self.failure: BaseException | None = None
        self.on_joined: Callable[[str, dict[str, Any]], None] | None = None  # hook for timing measurements
        self._allowed = asyncio.Event()  # cleared by hold(): do not reconnect until release()
        self._allowed.set()
        self._changed = asyncio.Event()  # set on every delivered message, for waiters
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._waiting: dict[Any, asyncio.Future[dict[str, Any]]] = {}  # ref -> answer of the current connection
        self._refs = itertools.count(1)
        self._turn = 0  # next index in round-robin order
        self._reconnect_delay = 0.0  # from the last reconnect frame
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self, timeout: float = 20) -> None:
        """Connect and join every room; returns once the client is ready."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-run")
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 20) -> None:
        ready = asyncio.ensure_future(self.ready.wait())
        assert self._task is not None
        await asyncio.wait({ready, self._task}, timeout=scaled(timeout), return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.failure is not None:
            raise ClientGaveUp(f"{self.name}: {self.failure!r}") from self.failure
        if not self.ready.is_set():
            raise TimeoutError(f"{self.name} did not get connected and joined within {timeout}s")

    async def close(self) -> None:
        self._closed = True
        self._allowed.set()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientGaveUp):
                await self._task

    async def hold(self) -> None:
        """Disconnect now and stay away until :meth:`release` (a client that lost its network)."""
        self._allowed.clear()
        self.ready.clear()
        if self._ws is not None:
            await self._ws.close()

    def release(self) -> None:
        """Let a held client reconnect (it resumes every room with ``since``)."""
        self._allowed.set()

    # -- sending --------------------------------------------------------------------------
    async def send(self, room: str, text: str) -> Acked:
        """Send until acknowledged; returns the ack. Raises ClientGaveUp after ``max_send_tries``."""
        backoff = self.backoff_base
        uncertain = False  # the previous try got no answer: it may have been stored
        for tries in range(1, self.max_send_tries + 1):
            await self.wait_ready(timeout=60)
            if uncertain:
                self.resends += 1
            try:
                answer = await self._request(self._ws, {"type": "message", "room": room, "text": text})
            except (ConnectionLost, ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
                uncertain = True
                continue
            if answer["type"] == "ack":
                acked = Acked(room, text, answer["id"], tries)
                self.acked.append(acked)
                return acked
            if answer.get("code") not in RETRYABLE_ERRORS:
                raise AssertionError(f"{self.name}: message refused: {answer}")
            if answer["code"] == "unavailable":
                self.unavailable += 1
            uncertain = False  # a refused message was not stored (barring a store that failed after writing)
            await asyncio.sleep(self.rng.uniform(0, backoff))  # backoff between tries, not a wait for an event
            backoff = min(backoff * 2, self.backoff_cap)
        raise ClientGaveUp(f"{self.name}: no ack for {text!r} after {self.max_send_tries} tries")

    # -- waiting for deliveries -------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` holds, re-checking on every delivered message."""
        deadline = time.monotonic() + scaled(timeout)
        while not predicate():
            if self.failure is not None:
                raise ClientGaveUp(f"{self.name} while waiting for {what}: {self.failure!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: timed out waiting for {what}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def wait_delivered(self, room: str, ids: set[str] | list[str], timeout: float = 30) -> None:
        """Wait until every id in ``ids`` was delivered in ``room``."""
        wanted = set(ids)
        log = self.rooms[room]
        await self.wait_for(lambda: wanted <= log.seen, timeout, f"{len(wanted - log.seen)} messages in {room}")

    # -- the connection loop ---------------------------------------------------------------
    def _next_url(self) -> str:
        if self.pick == "random":
            return self.rng.choice(list(self.urls))
        url = self.urls[self._turn % len(self.urls)]
        self._turn += 1
        return url

    async def _run(self) -> None:
        failures = 0
        backoff = self.backoff_base
        try:
            while not self._closed:
                await self._allowed.wait()
                if self._closed:
                    return
                joined_all = await self._session_once(self._next_url())
                if joined_all:
                    failures, backoff = 0, self.backoff_base  # reset after a connection that worked
                else:
                    failures += 1
                    if failures > self.max_reconnects:
                        raise ClientGaveUp(f"{self.name}: {failures} connection attempts failed in a row")
                delay = max(self.rng.uniform(0, backoff), self._reconnect_delay)
                self._reconnect_delay = 0.0
                backoff = min(backoff * 2, self.backoff_cap)
                await asyncio.sleep(delay)  # backoff between reconnect attempts
        except ClientGaveUp as exc:
            self.failure = exc
            raise

    async def _session_once(self, url: str) -> bool:
        """One connection: connect, join every room with since, read until it ends."""
        try:
            ws = await self.session.ws_connect(f"{url}/ws?token={self.token}", timeout=aiohttp.ClientWSTimeout(5))
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False
        self._ws = ws
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        joined_all = False
        try:
            joined_all = await self._join_all(ws)
            if joined_all:
                self.connects += 1
                self.ready.set()
            else:
                await ws.close()
            await reader
        finally:
            self.ready.clear()
            self._ws = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionLost())
            self.close_codes.append(ws.close_code)
        return joined_all

    async def _join_all(self, ws: aiohttp.ClientWebSocketResponse) -> bool:
        for room, log in self.rooms.items():
            frame: dict[str, Any] = {"type": "join", "room": room}
            if log.joins:  # a rejoin: resume after the last message this client has
                frame["since"] = log.last_id or EMPTY_ROOM_SINCE
            try:
                answer = await self._request(ws, frame)
            except (ConnectionLost, ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
                return False
            if answer["type"] != "joined":
                if answer.get("code") in RETRYABLE_ERRORS:
                    return False
                raise ClientGaveUp(f"{self.name}: join refused: {answer}")
        return True

    async def _request(self, ws: aiohttp.ClientWebSocketResponse | None, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame on ``ws`` and return the answer carrying its ref; ConnectionLost if ``ws`` goes."""
        if ws is None or ws.closed:
            raise ConnectionLost()
        ref = f"{self.name}-{next(self._refs)}"
        answer = asyncio.get_running_loop().create_future()
        self._waiting[ref] = answer
        try:
            await ws.send_str(orjson.dumps({**frame, "ref": ref}).decode())
            return await asyncio.wait_for(answer, scaled(self.ack_timeout))
        finally:
            self._waiting.pop(ref, None)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            self._dispatch(orjson.loads(message.data))

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message":
            self.rooms[frame["room"]].record(frame)
            self._changed.set()
        elif kind == "joined":
            log = self.rooms[frame["room"]]
            if not log.joins:
                log.baseline = frame["last_id"]
            log.joins.append(frame)
            if self.on_joined is not None:
                self.on_joined(frame["room"], frame)
        elif kind == "welcome":
            self.nodes.append(frame["node"])
        elif kind == "reconnect":
            self._reconnect_delay = min(frame["delay_ms"] / 1000, 5.0)
        waiter = self._waiting.get(frame.get("ref")) if "ref" in frame else None
        if waiter is not None and not waiter.done():
            waiter.set_result(frame)
