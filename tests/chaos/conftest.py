"""Helpers of the chaos tests: rooms over the HTTP API, history reads, process memory, and checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import pytest

from tests.chaos.resilient import ResilientClient, id_key
from tests.conftest import make_token
from tests.procs import scaled

# per-connection and per-user limits far above what the tests send, so only the faults under test act
GENEROUS_LIMITS = {
    "CHAT_MESSAGES_PER_SECOND": "100000",
    "CHAT_MESSAGES_BURST": "100000",
    "CHAT_HTTP_PER_SECOND": "100000",
    "CHAT_LOG_FORMAT": "text",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


async def create_room(
    http: aiohttp.ClientSession,
    url: str,
    owner: str,
    members: Iterable[str] = (),
    *,
    delay: float = 0.0,
    start: bool = False,
) -> str:
    """An echo bot (its room) owned by ``owner`` and shared with ``members``; returns its id."""
    body = {"name": "chaos", "kind": "echo", "config": {"delay": delay}}
    async with http.post(f"{url}/api/bots", json=body, headers=bearer(owner)) as response:
        assert response.status == 201, await response.text()
        bot = (await response.json())["id"]
    for member in members:
        async with http.put(f"{url}/api/bots/{bot}/members/{member}", headers=bearer(owner)) as response:
            assert response.status == 204, await response.text()
    if start:
        async with http.post(f"{url}/api/bots/{bot}/start", headers=bearer(owner)) as response:
            assert response.status == 202, await response.text()
    return bot


async def post_message(http: aiohttp.ClientSession, url: str, user: str, room: str, text: str) -> str:
    async with http.post(f"{url}/api/bots/{room}/messages", json={"text": text}, headers=bearer(user)) as response:
        assert response.status == 202, await response.text()
        return str((await response.json())["id"])


async def bot_status(http: aiohttp.ClientSession, url: str, owner: str, bot: str) -> str:
    async with http.get(f"{url}/api/bots/{bot}", headers=bearer(owner)) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["status"])


async def history(http: aiohttp.ClientSession, url: str, user: str, room: str) -> list[dict[str, Any]]:
    """Every message kept in the room's history, oldest first (paged through the HTTP API)."""
    messages: list[dict[str, Any]] = []
    since = "0-0"
    for _ in range(1000):  # bounded: 1000 pages of 1000
        query = f"since={since}&limit=1000"
        async with http.get(f"{url}/api/bots/{room}/messages?{query}", headers=bearer(user)) as response:
            assert response.status == 200, await response.text()
            page = (await response.json())["messages"]
        if not page:
            return messages
        messages += page
        since = page[-1]["id"]
    raise AssertionError("history paging did not end")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll an outside condition (an HTTP answer, a process) until it holds, with a deadline."""
    deadline = time.monotonic() + scaled(timeout)
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def rss_mib(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def check_sequence(ids: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Duplicates and backward steps in a list of message ids."""
    seen: set[str] = set()
    duplicates, disorder = [], []
    for previous, current in zip([None, *ids], ids, strict=False):
        if current in seen:
            duplicates.append(current)
        elif previous is not None and id_key(current) <= id_key(previous):
            disorder.append((previous, current))
        seen.add(current)
    return duplicates, disorder


def delivered_after_baseline(client: ResilientClient, room: str) -> list[str]:
    """Ids the client got in ``room`` that are newer than the room's newest message at its first join."""
    log = client.rooms[room]
    baseline = id_key(log.baseline) if log.baseline else (0, 0)
    return [i for i in log.ids() if id_key(i) > baseline]
