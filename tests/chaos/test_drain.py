"""SIGTERM drains a node holding 1,000 connections: readyz turns 503, every client gets reconnect and 1012."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from tests.procs import GatewayNode, RedisServer, make_token, scaled

pytestmark = pytest.mark.slow
CLIENTS = 1000
DRAIN_SECONDS = 3.0


async def test_sigterm_drains_a_thousand_connections(redis_server: RedisServer) -> None:
    """Every client of a stopping node is told to reconnect and closed with 1012; the node exits in bounded time."""
    node = GatewayNode(
        redis_server.url, "drain", CHAT_DRAIN_SECONDS=str(DRAIN_SECONDS), CHAT_MAX_CONNECTIONS_PER_USER="2000"
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        token = make_token("crowd")
        sockets = await asyncio.gather(*(session.ws_connect(f"{node.url}/ws?token={token}") for _ in range(CLIENTS)))
        for ws in sockets:
            assert (await ws.receive_json(timeout=scaled(30)))["type"] == "welcome"
        closes: list[tuple[int, float, float]] = []

        async def watch(ws: aiohttp.ClientWebSocketResponse) -> None:
            first = await ws.receive(timeout=scaled(30))
            assert first.type is aiohttp.WSMsgType.TEXT, (first, ws.close_code)
            reconnect = first.json()
            assert reconnect["type"] == "reconnect"
            closed = await ws.receive(timeout=scaled(30))
            assert closed.type is aiohttp.WSMsgType.CLOSE
            closes.append((int(closed.data), reconnect["delay_ms"], time.monotonic()))

        started = time.monotonic()
        os.kill(node.pid, signal.SIGTERM)
        watchers = asyncio.gather(*(watch(ws) for ws in sockets))
        async with session.get(f"{node.url}/readyz") as response:
            assert response.status == 503  # still listening while it drains, so the balancer sees it leave
        await watchers
        assert len(closes) == CLIENTS
        assert {code for code, _, _ in closes} == {1012}
        last_close = max(at for _, _, at in closes) - started
        delays = sorted(delay for _, delay, _ in closes)
        exit_code = await asyncio.to_thread(node.popen.wait, scaled(DRAIN_SECONDS + 20))
        exited = time.monotonic() - started
        print(
            f"\ndrain of {CLIENTS} connections: last close after {last_close:.2f}s, process exit after {exited:.2f}s, "
            f"reconnect delays {delays[0]}..{delays[-1]} ms (median {delays[CLIENTS // 2]})"
        )
        assert exit_code == 0
        for ws in sockets:
            await ws.close()
    node.terminate()
