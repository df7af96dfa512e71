"""A test rig for workers: a broker (memory or Redis) that creates bots, sends messages and records
every frame published to their rooms; and a local webhook server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from shared import packets, protocol
from shared.broker import Broker, make_broker
from shared.models import Bot, BotStatus
from shared.settings import Settings
from tests.procs import TEST_SECRET, scaled
from worker.kinds import KindCatalog
from worker.runner import Worker

_bots = itertools.count(1)
FAST = {"lease_seconds": 1.0, "visibility_timeout": 1.5, "drain_seconds": 5.0, "typing_timeout": 1.0}


class Rig:
    """The gateway's side of the bot flow, driven directly through a broker."""

    def __init__(self, broker: Broker, settings: Settings) -> None:
        self.broker = broker
        self.settings = settings
        self.frames: dict[str, list[dict[str, Any]]] = defaultdict(list)  # room -> frames in arrival order
        self._arrived = asyncio.Event()
        self.workers: list[Worker] = []
        self._extra_brokers: list[Broker] = []
        broker.fanout.set_handler(self._record)

    def _record(self, room: str, packet: bytes) -> None:
        self.frames[room].append(orjson.loads(packets.unpack(packet)[2]))
        self._arrived.set()

    async def until(self, predicate: Callable[[], Any], what: str, timeout: float = 10) -> Any:
        """Wait until ``predicate()`` is truthy, re-checking when a frame arrives (and every 50 ms)."""
        deadline = time.monotonic() + scaled(timeout)
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.05))
        return result

    async def eventually(self, check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10) -> Any:
        """Poll an async check every 20 ms until it is truthy; fail after ``timeout`` seconds."""
        deadline = time.monotonic() + scaled(timeout)
        while not (result := await check()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)
        return result

    async def bot(
        self, kind: str = "echo", config: dict[str, Any] | None = None, *, start: bool = True, wait: bool = True
    ) -> str:
        """Create a bot; with ``start`` ask for it to run and (with ``wait``) wait until a worker runs it."""
        bot_id = f"b{next(_bots)}x{int(time.time() * 1000) % 100000}"
        await self.broker.registry.create(Bot(bot_id, f"Bot {bot_id}", kind, "alice", config or {}))
        await self.broker.fanout.subscribe(bot_id)
        if start:
            await self.start(bot_id)
            if wait:
                await self.until(lambda: "running" in self.status_of(bot_id), f"{bot_id} to run")
        return bot_id

    async def start(self, bot: str) -> None:
        await self.broker.registry.set_status(bot, BotStatus.STARTING)

    async def stop(self, bot: str) -> None:
        await self.broker.registry.set_status(bot, BotStatus.STOPPING)

    async def send(self, bot: str, text: str, user: str = "alice") -> str:
        tail = protocol.message_tail(bot, {"kind": "user", "id": user}, text)
        return (await self.broker.history.append(bot, tail, request=True)).id

    # -- what the room saw ---------------------------------------------------------------------
    def of(self, room: str, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames[room] if frame["type"] == kind]

    def replies(self, room: str) -> list[dict[str, Any]]:
        return [f for f in self.of(room, "message") if f["from"]["kind"] == "bot"]

    def states(self, room: str, message_id: str) -> list[str]:
        """Progress of a request: "queued" when its message arrived marked so, then its status frames."""
        marked = ["queued" for f in self.of(room, "message") if f["id"] == message_id and f.get("queued")]
        return marked + [f["state"] for f in self.of(room, "status") if f["message_id"] == message_id]

    def status_of(self, room: str) -> list[str]:
        return [f["status"] for f in self.of(room, "bot_status")]

    def finished(self, room: str, message_id: str) -> bool:
        return any(state in ("done", "failed", "cancelled") for state in self.states(room, message_id))

    async def wait_finished(self, room: str, *message_ids: str, timeout: float = 10) -> None:
        await self.until(lambda: all(self.finished(room, m) for m in message_ids), f"requests of {room}", timeout)

    # -- workers ---------------------------------------------------------------------------------
    async def worker(self, name: str | None = None, catalog: KindCatalog | None = None, **overrides: Any) -> Worker:
        """Start an in-process worker with its own broker connection (its own Redis client)."""
        settings = self.settings.replace(**overrides) if overrides else self.settings
        broker = make_broker(settings, store=self.broker.store)
        self._extra_brokers.append(broker)
        consumer = name or f"w{len(self.workers) + 1}"
        worker = Worker.from_broker(broker, settings, consumer=consumer, catalog=catalog)
        self.workers.append(worker)
        await worker.start()
        return worker

    async def close(self) -> None:
        for worker in self.workers:
            if not worker.stopping.is_set():
                await worker.stop(drain=0)
        for broker in [*self._extra_brokers, self.broker]:
            await broker.close()


def rig_settings(backend: str, redis_url: str, redis_prefix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {**FAST, **overrides}
    if backend == "redis":
        values |= {"redis_url": redis_url, "redis_prefix": redis_prefix, "jwt_secret": TEST_SECRET}
    return Settings(**values)


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def rig(backend: str, redis_url: str, redis_prefix: str) -> AsyncIterator[Rig]:
    settings = rig_settings(backend, redis_url, redis_prefix)
    rig = Rig(make_broker(settings), settings)
    yield rig
    await rig.close()


class Webhook:
    """A local HTTP endpoint playing the bot; each path answers in one way."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []  # every request body received
        self.url = ""
        self.release = asyncio.Event()  # lets /slow answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/json", self.json)
        app.router.add_post("/stream", self.stream)
        app.router.add_post("/status/{code}", self.status)
        app.router.add_post("/slow", self.slow)
        app.router.add_post("/malformed", self.malformed)
        app.router.add_post("/no-text", self.no_text)
        app.router.add_post("/html", self.html)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.bodies.append(body)
        return body

    async def json(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        return web.json_response({"text": f"you said {body['message']['text']}"})

    async def _ndjson(self, request: web.Request, lines: list[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for line in lines:
            await response.write(line + b"\n")
        await response.write_eof()
        return response

    async def stream(self, request: web.Request) -> web.StreamResponse:
        text = (await self._body(request))["message"]["text"]
        words = text.split()
        lines = [orjson.dumps({"delta": (" " if i else "") + word}) for i, word in enumerate(words)]
        return await self._ndjson(request, [*lines, orjson.dumps({"text": text})])

    async def status(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.json_response({"error": "boom"}, status=int(request.match_info["code"]))

    async def slow(self, request: web.Request) -> web.Response:
        await self._body(request)
        await self.release.wait()  # until the test lets it answer (or the client gives up)
        return web.json_response({"text": "late"})

    async def malformed(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        return await self._ndjson(request, [b'{"delta":"a"}', b"{not json", b'{"text":"a"}'])

    async def no_text(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        return await self._ndjson(request, [b'{"delta":"a"}', b'{"delta":"b"}'])

    async def html(self, request: web.Request) -> web.Response:
        await self._body(request)
        return web.Response(text="<p>hi</p>", content_type="text/html")


@pytest.fixture
async def webhook(aiohttp_server: Any) -> AsyncIterator[Webhook]:
    hook = Webhook()
    server = await aiohttp_server(hook.app(), host="127.0.0.1")
    hook.url = f"http://127.0.0.1:{server.port}"
    yield hook
    hook.release.set()
