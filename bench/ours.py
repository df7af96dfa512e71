"""Setting up rooms on the gateway through its HTTP API, as a client application would.

A room is a bot's chat. The bench's owner creates one ``echo`` bot per room and shares it with the
room's members (``PUT /api/bots/{bot}/members/{user}``); the bot scenario gives each user a bot of
its own and starts it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Iterable
from typing import Any

import aiohttp
import jwt

SECRET = "bench-" + secrets.token_hex(16)
OWNER = "bench-owner"
API_CONCURRENCY = 32
START_TIMEOUT = 60.0


def token(user: str, ttl: float = 6 * 3600) -> str:
    """An HS256 token for ``user``, signed with the key the bench's gateways are started with."""
    return jwt.encode({"sub": user, "exp": int(time.time() + ttl)}, SECRET, algorithm="HS256")


class Api:
    """A few calls of the gateway's HTTP API, each checked for the status the contract promises."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base
        self._tokens: dict[str, str] = {}

    def _auth(self, user: str) -> dict[str, str]:
        if user not in self._tokens:
            self._tokens[user] = token(user)
        return {"Authorization": f"Bearer {self._tokens[user]}"}

    async def _call(self, method: str, path: str, user: str, expect: int, body: Any = None) -> Any:
        async with self.session.request(method, self.base + path, json=body, headers=self._auth(user)) as resp:
            if resp.status != expect:
                raise RuntimeError(f"{method} {path}: HTTP {resp.status} (expected {expect}): {await resp.text()}")
            return await resp.json() if resp.content_type == "application/json" else None

    async def create_bot(self, owner: str, name: str, config: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"name": name, "kind": "echo"}
        if config is not None:
            body["config"] = config
        bot = await self._call("POST", "/api/bots", owner, 201, body)
        return str(bot["id"])

    async def add_member(self, owner: str, bot: str, user: str) -> None:
        await self._call("PUT", f"/api/bots/{bot}/members/{user}", owner, 204)

    async def post_message(self, user: str, bot: str, text: str) -> str:
        return str((await self._call("POST", f"/api/bots/{bot}/messages", user, 202, {"text": text}))["id"])

    async def start_bot(self, owner: str, bot: str) -> None:
        await self._call("POST", f"/api/bots/{bot}/start", owner, 202)

    async def bot_status(self, owner: str, bot: str) -> str:
        return str((await self._call("GET", f"/api/bots/{bot}", owner, 200))["status"])


async def _bounded(calls: Iterable[Awaitable[Any]], limit: int = API_CONCURRENCY) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> Any:
        async with gate:
            return await call

    return await asyncio.gather(*(one(c) for c in calls))


async def make_rooms(base: str, rooms: list[list[str]]) -> list[str]:
    """Create one bot per room, owned by the bench's owner, shared with the room's users; return bot ids."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=API_CONCURRENCY)) as session:
        api = Api(session, base)
        bots = await _bounded(api.create_bot(OWNER, f"room {i}") for i in range(len(rooms)))
        await _bounded(
            api.add_member(OWNER, bot, user) for bot, users in zip(bots, rooms, strict=True) for user in users
        )
        return bots


async def post_messages(base: str, bots: list[str]) -> list[str]:
    """Post one message as the owner into each of ``bots``' rooms; return the new messages' ids."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=API_CONCURRENCY)) as session:
        api = Api(session, base)
        return await _bounded(api.post_message(OWNER, bot, "before the storm") for bot in bots)


async def make_bot_rooms(base: str, users: list[str], config: dict[str, Any] | None = None) -> list[str]:
    """Give every user a running echo bot of its own (with ``config``); return the bot ids once all of them run."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=API_CONCURRENCY)) as session:
        api = Api(session, base)
        bots = await _bounded(api.create_bot(user, f"echo of {user}", config) for user in users)
        await _bounded(api.start_bot(user, bot) for user, bot in zip(users, bots, strict=True))
        deadline = time.monotonic() + START_TIMEOUT
        waiting = dict(zip(bots, users, strict=True))
        while waiting:
            statuses = await _bounded(api.bot_status(user, bot) for bot, user in waiting.items())
            if "error" in statuses:
                raise RuntimeError("a bot went to status error while starting")
            waiting = {b: u for (b, u), s in zip(waiting.items(), statuses, strict=True) if s != "running"}
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} bots not running after {START_TIMEOUT:.0f} s")
            if waiting:
                await asyncio.sleep(0.2)
        return bots
