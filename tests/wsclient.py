"""A small test client for the gateway's WebSocket protocol."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

from tests.procs import scaled

_refs = itertools.count(1)


class ChatSocket:
    """One client connection: send frames, await the frames the server sends back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.seen: list[dict[str, Any]] = []  # every frame received, in order
        self.unread: list[dict[str, Any]] = []  # received but not yet returned by expect/request

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str, token: str, **kwargs: Any) -> ChatSocket:
        ws = await session.ws_connect(f"{url}/ws?token={token}", **kwargs)
        socket = cls(ws, {})
        socket.welcome = await socket.expect("welcome")
        return socket

    async def send(self, frame: dict[str, Any]) -> Any:
        """Send a frame with a fresh ref (unless it has one); return the ref."""
        frame.setdefault("ref", next(_refs))
        await self.ws.send_str(orjson.dumps(frame).decode())
        return frame["ref"]

    async def recv(self, timeout: float = 5) -> dict[str, Any]:
        message = await self.ws.receive(timeout=scaled(timeout))
        if message.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected a text frame, got {message.type.name} {message.data!r} {message.extra!r}")
        frame = orjson.loads(message.data)
        self.seen.append(frame)
        self.unread.append(frame)
        return frame

    def _take(self, match: Any) -> dict[str, Any] | None:
        for i, frame in enumerate(self.unread):
            if match(frame):
                return self.unread.pop(i)
        return None

    async def expect(self, kind: str, timeout: float = 5, **fields: Any) -> dict[str, Any]:
        """The oldest unread frame of type ``kind`` whose fields match (all frames stay in ``seen``)."""

        def match(frame: dict[str, Any]) -> bool:
            return frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items())

        return await self._wait(match, timeout, f"no {kind} frame with {fields}")

    async def _wait(self, match: Any, timeout: float, problem: str) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + scaled(timeout)
        while (frame := self._take(match)) is None:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{problem}; saw {self.seen[-10:]}")
            try:
                await self.recv(remaining)
            except TimeoutError:
                raise TimeoutError(f"{problem}; saw {self.seen[-10:]}") from None
        return frame

    async def request(self, frame: dict[str, Any], reply: str, timeout: float = 5) -> dict[str, Any]:
        """Send a frame and return the answer of type ``reply`` or ``error`` carrying its ref."""
        ref = await self.send(frame)

        def match(answer: dict[str, Any]) -> bool:
            return answer.get("ref") == ref and answer["type"] in (reply, "error")

        return await self._wait(match, timeout, f"no answer to {frame}")

    async def join(self, room: str, **extra: Any) -> dict[str, Any]:
        answer = await self.request({"type": "join", "room": room, **extra}, "joined")
        assert answer["type"] == "joined", answer
        return answer

    async def close_frame(self, timeout: float = 10) -> int | None:
        """Read until the server closes; return the close code."""
        deadline = asyncio.get_running_loop().time() + scaled(timeout)
        while True:
            message = await self.ws.receive(timeout=max(0.01, deadline - asyncio.get_running_loop().time()))
            if message.type is aiohttp.WSMsgType.CLOSE:
                return int(message.data)  # the code the server sent
            if message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code
            if message.type is aiohttp.WSMsgType.TEXT:
                self.seen.append(orjson.loads(message.data))

    async def close(self) -> None:
        await self.ws.close()
