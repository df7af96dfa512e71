"""The openai kind against a real local server that speaks the streaming chat-completions format."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shared.broker.queue import Request
from shared.models import Bot
from tests.conftest import make_token
from tests.procs import GatewayNode, WorkerProcess, free_port, scaled
from tests.worker.conftest import Rig
from tests.wsclient import ChatSocket
from worker.kinds import KindCatalog, RequestFailed, available_kinds, validate_bot_config
from worker.kinds.openai import OpenAIKind

KEY = "sk-test-7f3a9c0d-not-a-real-key"
KEY_ENV = "TEST_MODEL_KEY"
PIECES = ["Hel", "lo", ", wor", "ld"]


def chunk(content: str | None = None, *, finish: str | None = None, role: str | None = None) -> bytes:
    """One ``data:`` event of a chat-completion stream."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"


class ModelServer:
    """A local chat-completions endpoint; the first path segment of the base URL picks its behaviour."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []  # every request body received
        self.auth: list[str | None] = []  # the Authorization header of every request
        self.url = ""
        self.release = asyncio.Event()  # lets /silent and /hang go on (set at teardown)
        self.disconnected = asyncio.Event()  # the client went away while /hang was streaming

    def base(self, behaviour: str) -> str:
        return f"{self.url}/{behaviour}/v1"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{behaviour}/v1/chat/completions", self.complete)
        return app

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(orjson.loads(await request.read()))
        self.auth.append(request.headers.get("Authorization"))
        behaviour = request.match_info["behaviour"]
        if behaviour.startswith("status-"):
            message = f"Incorrect API key provided: {KEY}" if behaviour == "status-401" else "try later"
            return web.json_response({"error": {"message": message}}, status=int(behaviour[7:]))
        if behaviour == "json":
            choice = {"index": 0, "message": {"role": "assistant", "content": "one piece"}, "finish_reason": "stop"}
            return web.json_response({"object": "chat.completion", "choices": [choice]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive\n\n" + chunk(role="assistant", content=""))
        for piece in PIECES[:2]:
            await response.write(chunk(piece))
        await getattr(self, behaviour.replace("-", "_"))(request, response)
        return response

    async def stream(self, request: web.Request, response: web.StreamResponse) -> None:
        for piece in PIECES[2:]:
            await response.write(chunk(piece))
        usage = {"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}}
        await response.write(chunk(finish="stop") + b"data: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()

    async def cut(self, request: web.Request, response: web.StreamResponse) -> None:
        assert request.transport is not None
        request.transport.abort()  # the chunked body stops halfway: no last chunk, no [DONE]

    async def no_done(self, request: web.Request, response: web.StreamResponse) -> None:
        await response.write_eof()  # a clean end of the body, but the model was not finished

    async def malformed(self, request: web.Request, response: web.StreamResponse) -> None:
        await response.write(b'data: {"choices": [{"index": 0, "delta": {"content": "x"\n\n')
        await response.write_eof()

    async def long_line(self, request: web.Request, response: web.StreamResponse) -> None:
        await response.write(b"data: " + b"x" * 600_000 + b"\n\n")
        await response.write_eof()

    async def error_event(self, request: web.Request, response: web.StreamResponse) -> None:
        await response.write(b'data: {"error": {"message": "the model is overloaded"}}\n\n')
        await response.write_eof()

    async def silent(self, request: web.Request, response: web.StreamResponse) -> None:
        await self.release.wait()

    async def hang(self, request: web.Request, response: web.StreamResponse) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:  # aiohttp cancels the handler when the client disconnects
            self.disconnected.set()
            raise


@pytest.fixture
async def model(aiohttp_server: Any) -> AsyncIterator[ModelServer]:
    server = ModelServer()
    running = await aiohttp_server(server.app(), host="127.0.0.1")
    server.url = f"http://127.0.0.1:{running.port}"
    yield server
    server.release.set()


@pytest.fixture
async def kind() -> AsyncIterator[OpenAIKind]:
    made = OpenAIKind(environ={KEY_ENV: KEY})
    yield made
    await made.close()


class Recorder:
    """A kind's context that keeps what the kind did and serves a given room history."""

    def __init__(self, config: dict[str, Any], history: list[dict[str, Any]] | None = None) -> None:
        self.bot = Bot("b1", "Model", "openai", "alice", config)
        self.config = OpenAIKind.validate_config(config)
        self.calls: list[tuple[str, Any]] = []
        self.deltas: list[str] = []
        self.arrived = asyncio.Event()  # set on every delta
        self._history = history or []

    async def typing(self, state: bool) -> None:
        self.calls.append(("typing", state))

    async def status(self, state: str, detail: str | None = None) -> None:
        self.calls.append(("status", state))

    async def delta(self, text: str) -> None:
        self.deltas.append(text)
        self.arrived.set()

    async def reply(self, text: str) -> None:
        self.calls.append(("reply", text))

    async def history(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("history", limit))
        return self._history[-limit:]

    async def until_deltas(self, count: int) -> None:
        async with asyncio.timeout(scaled(5)):
            while len(self.deltas) < count:
                self.arrived.clear()
                await self.arrived.wait()


def request(text: str = "say hello") -> Request:
    sender = {"kind": "user", "id": "alice", "name": "Alice"}
    return Request("b1", "1-0", "1700000000000-0", text, sender, 1700000000000, 1, b"{}")


def said(sender: str, text: str, kind: str = "user") -> dict[str, Any]:
    return {"type": "message", "id": "1-0", "ts": 1, "room": "b1", "from": {"kind": kind, "id": sender}, "text": text}


def config(model: ModelServer, behaviour: str = "stream", **extra: Any) -> dict[str, Any]:
    return {"base_url": model.base(behaviour), "model": "test-model", "api_key_env": KEY_ENV, "timeout": 5} | extra


async def failure(kind: OpenAIKind, ctx: Recorder) -> RequestFailed:
    with pytest.raises(RequestFailed) as caught:
        await kind.handle(request(), ctx)
    return caught.value


# -- streaming -----------------------------------------------------------------------------------


async def test_pieces_reach_the_room_in_order_and_make_the_reply(model: ModelServer, kind: OpenAIKind) -> None:
    """Each streamed piece goes to ctx.delta in order, and the reply is their concatenation."""
    ctx = Recorder(config(model, temperature=0.5, max_tokens=64))
    assert await kind.handle(request(), ctx) == "Hello, world"
    assert ctx.deltas == PIECES
    assert ctx.calls == [("history", 20), ("status", "thinking")]
    [body] = model.bodies
    assert body == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "say hello"}],
        "stream": True,
        "temperature": 0.5,
        "max_tokens": 64,
    }
    assert model.auth == [f"Bearer {KEY}"]


async def test_history_and_system_prompt_arrive_as_messages_in_order(model: ModelServer, kind: OpenAIKind) -> None:
    """The system prompt comes first, then the room's messages oldest first, the request last."""
    history = [
        said("alice", "hi"),
        said("b1", "hello alice", kind="bot"),
        said("bob", "and me?"),
        said("b1", "", kind="bot"),  # an empty message is left out
    ]
    ctx = Recorder(config(model, system_prompt="Be brief.", history=3), history)
    await kind.handle(request("what now?"), ctx)
    assert model.bodies[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "hello alice"},
        {"role": "user", "content": "and me?"},
        {"role": "user", "content": "what now?"},
    ]
    assert ("history", 3) in ctx.calls


async def test_no_history_is_read_when_history_is_zero(model: ModelServer, kind: OpenAIKind) -> None:
    """With config.history 0 only the request is sent and the room's history is not read."""
    ctx = Recorder(config(model, history=0), [said("alice", "old")])
    await kind.handle(request(), ctx)
    assert model.bodies[0]["messages"] == [{"role": "user", "content": "say hello"}]
    assert not [call for call in ctx.calls if call[0] == "history"]


async def test_a_server_that_ignores_stream_answers_in_one_piece(model: ModelServer, kind: OpenAIKind) -> None:
    """A JSON completion instead of a stream is still the reply, sent as one delta."""
    ctx = Recorder(config(model, "json"))
    assert await kind.handle(request(), ctx) == "one piece"
    assert ctx.deltas == ["one piece"]


async def test_no_key_means_no_authorization_header(model: ModelServer, kind: OpenAIKind) -> None:
    """Without config.api_key_env (a local server) the request carries no Authorization."""
    settings = config(model)
    del settings["api_key_env"]
    await kind.handle(request(), Recorder(settings))
    assert model.auth == [None]


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retryable", "message"),
    [
        (401, False, "answered HTTP 401: Incorrect API key provided: ***"),
        (400, False, "answered HTTP 400: try later"),
        (429, True, "answered HTTP 429: try later"),
        (500, True, "answered HTTP 500: try later"),
        (503, True, "answered HTTP 503: try later"),
    ],
)
async def test_error_answers_fail_with_the_servers_message(
    model: ModelServer, kind: OpenAIKind, status: int, retryable: bool, message: str
) -> None:
    """A non-2xx answer fails with the server's message; 4xx other than 429 are not retried."""
    failed = await failure(kind, Recorder(config(model, f"status-{status}")))
    assert message in failed.reason
    assert failed.retryable is retryable
    assert KEY not in failed.reason


async def test_the_key_is_the_bearer_and_never_in_reasons_or_logs(
    model: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker sends the key as the bearer; the refusal that echoes it reaches room and logs masked."""
    caplog.set_level(logging.DEBUG)
    rig_kind = OpenAIKind(environ={KEY_ENV: KEY})
    settings = config(model, "status-401")
    ctx = Recorder(settings)
    try:
        failed = await failure(rig_kind, ctx)
    finally:
        await rig_kind.close()
    assert model.auth == [f"Bearer {KEY}"]
    assert "***" in failed.reason
    assert KEY not in failed.reason
    assert KEY not in caplog.text
    assert KEY not in repr(failed)


async def test_a_failed_request_never_shows_the_key(
    rig: Rig, model: ModelServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Through a worker, a 401 ends in one attempt with status failed; neither it nor any log has the key."""
    caplog.set_level(logging.DEBUG)
    await rig.worker(catalog=KindCatalog(extra={"openai": lambda: OpenAIKind(environ={KEY_ENV: KEY})}))
    bot = await rig.bot("openai", config(model, "status-401"))
    message = await rig.send(bot, "hello")
    await rig.wait_finished(bot, message)
    [failed] = [f for f in rig.of(bot, "status") if f["state"] == "failed"]
    assert "answered HTTP 401: Incorrect API key provided: ***" in failed["detail"]
    assert len(model.bodies) == 1  # not retried
    assert KEY not in orjson.dumps(rig.frames[bot]).decode()
    assert KEY not in caplog.text


async def test_a_stream_cut_halfway_fails_clearly(model: ModelServer, kind: OpenAIKind) -> None:
    """A connection that breaks mid-stream fails, retryably, after the pieces that did arrive."""
    ctx = Recorder(config(model, "cut"))
    failed = await failure(kind, ctx)
    assert failed.reason == "the model server's stream broke off after 5 characters of the reply"
    assert failed.retryable
    assert ctx.deltas == PIECES[:2]


async def test_a_stream_that_ends_without_done_fails(model: ModelServer, kind: OpenAIKind) -> None:
    """A body that ends before the model finished (no finish reason, no [DONE]) fails."""
    failed = await failure(kind, Recorder(config(model, "no-done")))
    assert failed.reason == "the model server's stream ended before [DONE], after 5 characters of the reply"
    assert failed.retryable


async def test_malformed_json_in_a_data_line_fails(model: ModelServer, kind: OpenAIKind) -> None:
    """A data line that is not JSON fails the request without a retry, naming the event."""
    failed = await failure(kind, Recorder(config(model, "malformed")))
    assert failed.reason == "event 4 of the model server's stream is not valid JSON"
    assert not failed.retryable


async def test_an_overlong_line_fails(model: ModelServer, kind: OpenAIKind) -> None:
    """A stream line past the read buffer fails the request without a retry."""
    failed = await failure(kind, Recorder(config(model, "long-line")))
    assert failed.reason == "a line of the model server's stream is too long"
    assert not failed.retryable


async def test_an_error_event_mid_stream_fails_with_its_message(model: ModelServer, kind: OpenAIKind) -> None:
    """An ``error`` object in the stream fails the attempt with the server's message."""
    failed = await failure(kind, Recorder(config(model, "error-event")))
    assert failed.reason == "the model server reported an error mid-stream: the model is overloaded"
    assert failed.retryable


async def test_silence_times_out(model: ModelServer, kind: OpenAIKind) -> None:
    """A server that sends nothing for config.timeout seconds fails the request, retryably."""
    failed = await failure(kind, Recorder(config(model, "silent", timeout=0.3)))
    assert failed.reason == "the model server sent nothing for 0.3 s, after 5 characters of the reply"
    assert failed.retryable


async def test_a_refused_connection_fails(kind: OpenAIKind) -> None:
    """Nothing listening at the base URL fails the request with a reason."""
    settings = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m", "connect_timeout": 2}
    failed = await failure(kind, Recorder(settings))
    assert failed.reason.startswith("could not connect to the model server")
    assert failed.retryable


async def test_an_unset_key_variable_fails_without_a_retry(model: ModelServer) -> None:
    """A config naming a variable the worker lacks fails at once, and nothing is sent."""
    bare = OpenAIKind(environ={})
    try:
        failed = await failure(bare, Recorder(config(model)))
    finally:
        await bare.close()
    assert failed.reason == f"the worker's environment variable {KEY_ENV} (config.api_key_env) is unset or empty"
    assert not failed.retryable
    assert model.bodies == []


async def test_cancelling_the_handler_closes_the_http_stream(model: ModelServer, kind: OpenAIKind) -> None:
    """A cancelled handler drops the connection at once: the server sees the client go mid-stream."""
    ctx = Recorder(config(model, "hang"))
    task = asyncio.create_task(kind.handle(request(), ctx))
    await ctx.until_deltas(2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(model.disconnected.wait(), scaled(5))
    assert ctx.deltas == PIECES[:2]  # the reply so far is what was streamed, and nothing follows


# -- config --------------------------------------------------------------------------------------


def test_openai_is_an_installed_kind() -> None:
    """The package's entry points provide the openai kind to gateways and workers."""
    assert "openai" in available_kinds()
    assert isinstance(KindCatalog().get("openai"), OpenAIKind)


def test_config_is_normalised() -> None:
    """A minimal config gets its defaults; a trailing slash or /chat/completions on the base URL goes."""
    endpoint = {"base_url": "http://localhost:11434/v1/chat/completions", "model": "llama3"}
    assert validate_bot_config("openai", endpoint)["base_url"] == "http://localhost:11434/v1"
    assert validate_bot_config("openai", {"base_url": "http://localhost:11434/v1/", "model": "llama3"}) == {
        "base_url": "http://localhost:11434/v1",
        "model": "llama3",
        "history": 20,
        "timeout": 60.0,
        "connect_timeout": 10.0,
    }
    full = {
        "base_url": "https://api.example.test/v1",
        "model": "gpt-x",
        "system_prompt": "Be kind.",
        "api_key_env": "OPENAI_API_KEY",
        "history": 0,
        "timeout": 120,
        "connect_timeout": 5,
        "temperature": 0,
        "max_tokens": 500,
    }
    assert validate_bot_config("openai", full | {"history": 5.0})["history"] == 5
    assert validate_bot_config("openai", full) == full | {"timeout": 120.0, "connect_timeout": 5.0, "temperature": 0.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"base_url": None}, r"config\.base_url is required"),
        ({"base_url": "ftp://host/v1"}, r"http:// or https:// URL"),
        ({"base_url": "https://user:sk-abc@host/v1"}, r"must not carry credentials"),
        ({"base_url": "https://host/v1?key=sk-abc"}, r"query or a fragment"),
        ({"base_url": "https://host:99999/v1"}, r"not a valid URL"),
        ({"model": None}, r"config\.model is required"),
        ({"model": ""}, r"config\.model is required"),
        ({"api_key": "sk-abc"}, r"config\.api_key is refused: a key never goes into a bot's config"),
        ({"headers": {"Authorization": "Bearer x"}}, r"config\.headers is refused"),
        ({"api_key_env": "sk-proj-abc123"}, r"NAME of the workers' environment variable .* never the key itself"),
        ({"api_key_env": "CHAT_JWT_SECRET"}, r"gateway's own settings"),
        ({"history": 101}, r"config\.history must be a whole number between 0 and 100"),
        ({"history": True}, r"config\.history must be a whole number"),
        ({"history": 2.5}, r"config\.history must be a whole number"),
        ({"timeout": 0}, r"config\.timeout must be between"),
        ({"connect_timeout": 61}, r"config\.connect_timeout must be between"),
        ({"temperature": 3}, r"config\.temperature must be between 0 and 2"),
        ({"max_tokens": 0}, r"config\.max_tokens must be a whole number"),
        ({"system_prompt": 5}, r"config\.system_prompt must be a string"),
        ({"system_prompt": "x" * 32_001}, r"config\.system_prompt must be at most 32000 characters"),
        ({"max_tokens": "null"}, r"config\.max_tokens must be a whole number"),
        ({"api_key_env": "null"}, r"config\.api_key_env must be the NAME"),
        ({"model": "gpt\n4"}, r"config\.model must be a model name without control characters"),
        ({"stream": False}, r"unknown config field 'stream'"),
    ],
)
def test_config_errors_name_the_problem(change: dict[str, Any], message: str) -> None:
    """A bad openai config is refused with a message naming the field and what is wrong."""
    bad = {"base_url": "https://api.example.test/v1", "model": "m"} | change
    bad = {name: None if value == "null" else value for name, value in bad.items() if value is not None}
    with pytest.raises(ValueError, match=message):
        validate_bot_config("openai", bad)


# -- through the worker and the gateway ---------------------------------------------------------


async def test_history_through_a_worker_skips_newer_messages(rig: Rig, model: ModelServer) -> None:
    """On both brokers, a request gets the room's earlier messages and replies, never the ones after it."""
    await rig.worker(catalog=KindCatalog(extra={"openai": lambda: OpenAIKind(environ={KEY_ENV: KEY})}))
    bot = await rig.bot("openai", config(model, system_prompt="Be brief."), start=False)
    first, second = await rig.send(bot, "first"), await rig.send(bot, "second")  # queued: both are in history
    await rig.start(bot)
    await rig.wait_finished(bot, first, second)
    system = {"role": "system", "content": "Be brief."}
    assert [body["messages"] for body in model.bodies] == [
        [system, {"role": "user", "content": "first"}],
        [
            system,
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "Hello, world"},
            {"role": "user", "content": "second"},
        ],
    ]
    assert [r["text"] for r in rig.replies(bot)] == ["Hello, world", "Hello, world"]
    for request in (first, second):  # pieces close together go out as one delta; none is lost
        assert "".join(d["text"] for d in rig.of(bot, "delta") if d["reply_to"] == request) == "".join(PIECES)


@pytest.fixture
def nodes(redis_url: str, redis_prefix: str) -> Iterator[tuple[GatewayNode, WorkerProcess]]:
    """A gateway process and a worker process whose environment holds the model key."""
    env = {"CHAT_REDIS_PREFIX": redis_prefix, "CHAT_LOG_FORMAT": "text"}
    gateway = GatewayNode(redis_url, "gw", **env)
    try:
        worker = WorkerProcess(redis_url, "worker", **env, **{KEY_ENV: KEY})
    except Exception:
        gateway.terminate()
        raise
    yield gateway, worker
    for proc in (worker, gateway):
        proc.terminate()
        assert KEY not in proc.log()


@pytest.mark.slow
async def test_an_openai_bot_answers_through_gateway_and_worker(
    nodes: tuple[GatewayNode, WorkerProcess], model: ModelServer
) -> None:
    """Only an admin creates an openai bot; a user's message to it comes back as deltas, then the reply."""
    gateway, _ = nodes
    admin = make_token("owner", roles=["admin"])
    async with aiohttp.ClientSession() as session:
        body = {"name": "Model", "kind": "openai", "config": config(model)}
        user = {"Authorization": f"Bearer {make_token('mallory')}"}
        async with session.post(f"{gateway.url}/api/bots", json=body, headers=user) as response:
            assert response.status == 403, await response.text()
            assert "needs the admin role" in await response.text()
        async with session.post(
            f"{gateway.url}/api/bots", json=body, headers={"Authorization": f"Bearer {admin}"}
        ) as response:
            assert response.status == 201, await response.text()
            bot = (await response.json())["id"]
        client = await ChatSocket.connect(session, gateway.url, admin)
        await client.join(bot)
        await client.request({"type": "bot.start", "bot": bot}, "bot_status")
        await client.expect("bot_status", bot=bot, status="running", timeout=10)
        ack = await client.request({"type": "message", "room": bot, "text": "say hello"}, "ack")
        reply = await client.expect("message", reply_to=ack["id"], timeout=10)
        await client.expect("status", message_id=ack["id"], state="done", timeout=10)
    deltas = [f["text"] for f in client.seen if f["type"] == "delta" and f["reply_to"] == ack["id"]]
    assert "".join(deltas) == "".join(PIECES)  # pieces close together may go out as one delta
    assert reply["text"] == "Hello, world"
    assert (reply["from"]["kind"], reply["from"]["id"]) == ("bot", bot)
    assert model.auth == [f"Bearer {KEY}"]
    assert model.bodies[0]["messages"] == [{"role": "user", "content": "say hello"}]
