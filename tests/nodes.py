"""Gateway nodes served in this process on the memory or the Redis broker (the ``cluster`` fixture)."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from shared.broker.memory import MemoryStore
from shared.settings import Settings
from tests.procs import TEST_SECRET, make_token
from tests.wsclient import ChatSocket


class Cluster:
    """Nodes that share one broker store: one Redis, or one in-memory store."""

    def __init__(self, kind: str, redis_url: str, prefix: str) -> None:
        self.kind = kind
        self.redis_url = redis_url if kind == "redis" else None
        self.prefix = prefix
        self.servers: list[TestServer] = []
        self.store: MemoryStore | None = None
        self.session = aiohttp.ClientSession()

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "redis_url": self.redis_url,
            "jwt_secret": TEST_SECRET,
            "redis_prefix": self.prefix,
            "in_process_workers": 0,
            "log_format": "text",
        }
        return Settings(**{**base, **overrides})

    async def node(self, **overrides: Any) -> str:
        """Start one more node; returns its base URL."""
        settings = self.settings(node_id=f"node{len(self.servers)}", **overrides)
        if self.kind == "memory" and self.store is None:
            self.store = MemoryStore(settings)
        server = TestServer(create_app(settings, store=self.store), host="127.0.0.1")
        await server.start_server()
        self.servers.append(server)
        return str(server.make_url("")).rstrip("/")

    async def connect(self, url: str, user: str = "alice", **claims: Any) -> ChatSocket:
        return await ChatSocket.connect(self.session, url, make_token(user, **claims))

    async def api(
        self, method: str, url: str, user: str = "alice", *, json: Any = None, **claims: Any
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {make_token(user, **claims)}"}
        async with self.session.request(method, url, json=json, headers=headers) as response:
            body = await response.json() if response.content_type == "application/json" else await response.read()
            return response.status, body

    async def bot(
        self, url: str, owner: str = "alice", *, members: tuple[str, ...] = (), **fields: Any
    ) -> dict[str, Any]:
        status, bot = await self.api(
            "POST", f"{url}/api/bots", owner, json={"name": "helper", "kind": "echo", **fields}
        )
        assert status == 201, bot
        for member in members:
            status, _ = await self.api("PUT", f"{url}/api/bots/{bot['id']}/members/{member}", owner)
            assert status == 204
        return bot

    async def close(self) -> None:
        await self.session.close()
        for server in self.servers:
            await server.close()
