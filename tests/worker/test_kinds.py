"""Bot kinds on their own: config validation and the webhook protocol against a real local server."""

from __future__ import annotations

from typing import Any

import pytest

from shared.broker.queue import Request
from shared.models import Bot
from tests.worker.conftest import Webhook
from worker.kinds import KindCatalog, RequestFailed, available_kinds, validate_bot_config
from worker.kinds.echo import EchoKind
from worker.kinds.webhook import WebhookKind


class Recorder:
    """A kind's context that keeps what the kind did."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.bot = Bot("b1", "Hook", "webhook", "alice", config)
        self.config = config
        self.calls: list[tuple[str, Any]] = []
        self.final: str | None = None

    async def typing(self, state: bool) -> None:
        self.calls.append(("typing", state))

    async def status(self, state: str, detail: str | None = None) -> None:
        self.calls.append(("status", state))

    async def delta(self, text: str) -> None:
        self.calls.append(("delta", text))

    async def reply(self, text: str) -> None:
        self.final = text


def request(text: str = "hello there") -> Request:
    sender = {"kind": "user", "id": "alice", "name": "Alice"}
    return Request("b1", "1-0", "1700000000000-0", text, sender, 1700000000000, 1, b"{}")


def test_builtin_kinds_are_discovered() -> None:
    """The entry points of the installed package provide echo and webhook."""
    assert {"echo", "webhook"} <= set(available_kinds())
    catalog = KindCatalog()
    assert isinstance(catalog.get("echo"), EchoKind)
    assert catalog.get("echo") is catalog.get("echo")


def test_unknown_kind_is_refused() -> None:
    """Creating a bot of a kind nobody installed fails with a clear message."""
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        validate_bot_config("nope", {})
    with pytest.raises(ValueError, match="unknown kind 'nope'"):
        KindCatalog().get("nope")


@pytest.mark.parametrize(
    ("config", "expected"),
    [(None, {}), ({}, {}), ({"delay": 0}, {}), ({"delay": 1.5}, {"delay": 1.5}), ({"delay": 2}, {"delay": 2.0})],
)
def test_echo_config_is_normalised(config: Any, expected: dict[str, Any]) -> None:
    """Echo accepts an optional non-negative delay."""
    assert validate_bot_config("echo", config) == expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"delay": -1}, "config.delay must be between"),
        ({"delay": "soon"}, "config.delay must be a number"),
        ({"delay": True}, "config.delay must be a number"),
        ({"dealy": 1}, "unknown config field 'dealy'"),
        ([1], "config must be an object"),
    ],
)
def test_echo_config_errors_name_the_field(config: Any, message: str) -> None:
    """A bad echo config is refused with a message naming the problem."""
    with pytest.raises(ValueError, match=message):
        validate_bot_config("echo", config)


def test_webhook_config_is_checked() -> None:
    """Webhook needs an http(s) URL; timeout defaults to 30 s; headers must be strings."""
    assert validate_bot_config("webhook", {"url": "https://example.test/hook"}) == {
        "url": "https://example.test/hook",
        "timeout": 30.0,
    }
    config = {"url": "http://127.0.0.1:9/x", "timeout": 2, "headers": {"Authorization": "Bearer t"}}
    assert validate_bot_config("webhook", config)["headers"] == {"Authorization": "Bearer t"}
    for bad, message in [
        ({}, "config.url is required"),
        ({"url": "ftp://host/x"}, "http:// or https://"),
        ({"url": "http:///x"}, "with a host"),
        ({"url": "http://h/x", "timeout": 0}, "config.timeout must be between"),
        ({"url": "http://h/x", "headers": {"a": 1}}, "config.headers"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_bot_config("webhook", bad)


async def test_echo_thinks_for_its_delay() -> None:
    """Echo reports thinking when it has a delay, then returns the text."""
    ctx = Recorder({"delay": 0.01})
    assert await EchoKind().handle(request("hi"), ctx) == "hi"
    assert ctx.calls == [("status", "thinking")]
    quiet = Recorder({})
    assert await EchoKind().handle(request("hi"), quiet) == "hi"
    assert quiet.calls == []


@pytest.fixture
async def hook_kind() -> Any:
    kind = WebhookKind()
    yield kind
    await kind.close()


async def test_webhook_json_answer_is_the_reply(webhook: Webhook, hook_kind: WebhookKind) -> None:
    """A JSON answer's text is the reply; the endpoint gets the bot id and the message."""
    ctx = Recorder({"url": f"{webhook.url}/json", "timeout": 5})
    assert await hook_kind.handle(request("hello there"), ctx) == "you said hello there"
    assert webhook.bodies == [
        {
            "bot": "b1",
            "message": {
                "id": "1700000000000-0",
                "text": "hello there",
                "from": {"kind": "user", "id": "alice", "name": "Alice"},
                "ts": 1700000000000,
            },
        }
    ]
    assert ctx.calls == [("status", "executing")]


async def test_webhook_stream_sends_deltas_then_the_reply(webhook: Webhook, hook_kind: WebhookKind) -> None:
    """An ndjson answer's delta lines go out live, and its final text is the reply."""
    ctx = Recorder({"url": f"{webhook.url}/stream", "timeout": 5})
    assert await hook_kind.handle(request("one two three"), ctx) == "one two three"
    assert [c for c in ctx.calls if c[0] == "delta"] == [("delta", "one"), ("delta", " two"), ("delta", " three")]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/status/500", "answered HTTP 500"),
        ("/status/404", "answered HTTP 404"),
        ("/malformed", "line 2 of the webhook's stream is not valid JSON"),
        ("/no-text", "ended without the final text"),
        ("/html", "unsupported content type 'text/html'"),
    ],
)
async def test_webhook_bad_answers_fail(webhook: Webhook, hook_kind: WebhookKind, path: str, message: str) -> None:
    """Non-2xx answers, malformed lines, streams without text and other content types fail."""
    with pytest.raises(RequestFailed, match=message):
        await hook_kind.handle(request(), Recorder({"url": f"{webhook.url}{path}", "timeout": 5}))


async def test_webhook_silence_times_out(webhook: Webhook, hook_kind: WebhookKind) -> None:
    """An endpoint that sends nothing for config.timeout seconds fails the request."""
    with pytest.raises(RequestFailed, match=r"sent nothing for 0\.3 s"):
        await hook_kind.handle(request(), Recorder({"url": f"{webhook.url}/slow", "timeout": 0.3}))


async def test_webhook_unreachable_fails(hook_kind: WebhookKind) -> None:
    """A refused connection fails the request with a reason."""
    from tests.procs import free_port

    url = f"http://127.0.0.1:{free_port()}/x"
    with pytest.raises(RequestFailed, match="could not be reached"):
        await hook_kind.handle(request(), Recorder({"url": url, "timeout": 2}))
