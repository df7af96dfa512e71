"""The HTTP API against its own OpenAPI description, fuzzed by Schemathesis on a real gateway on Redis.

Every operation gets schema-valid and schema-breaking requests as an admin and as a plain user,
aimed at random bot ids and at bots that exist (owned by the caller or by someone else). Each
answer must be documented (status, content type, body schema), never a 5xx, and the gateway must
log no error while serving them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation as Location

from gateway.app import create_app
from gateway.openapi import build_spec
from shared.settings import Settings
from tests.conftest import make_token
from tests.procs import TEST_SECRET, scaled

USER, STRANGER, ADMIN = "fuzzer", "stranger", "root"
# 413 is how the API refuses a text over the length limit, a documented rejection of invalid data
REJECTIONS = ["400", "401", "403", "404", "405", "413"]
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": REJECTIONS}}})
# /ws answers an upgrade with a WebSocket, which an HTTP fuzzer cannot speak; the frame fuzzers cover it
schema = schemathesis.openapi.from_dict(build_spec(), config=CONFIG).exclude(path="/ws")


class LiveGateway:
    """A gateway served on a loopback port by an event loop in a thread of its own.

    Schemathesis sends its requests synchronously, so the server cannot share the test's loop.
    """

    def __init__(self, app_settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(create_app(app_settings))
        self._run(self._start())
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    def _run(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(scaled(15))

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()

    def close(self) -> None:
        self._run(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(scaled(10))
        self.loop.close()


class ErrorLog(logging.Handler):
    """Keeps every error the gateway logs while the fuzzer runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Bots:
    """Bots that exist for the fuzzer to aim at; recreated when a fuzzed DELETE removed one."""

    def __init__(self, url: str, http: requests.Session) -> None:
        self.url = url
        self.http = http
        self.ids: dict[str, str] = {}
        # where a case's bot id points: as generated (mostly unknown), or at a bot that exists
        self.targets = itertools.cycle(["generated", USER, STRANGER])

    def id_for(self, owner: str) -> str:
        bot_id = self.ids.get(owner)
        if bot_id is not None and self._call("GET", f"/api/bots/{bot_id}", ADMIN).status_code == 200:
            return bot_id
        answer = self._call("POST", "/api/bots", owner, json={"name": f"{owner}'s bot", "kind": "echo"})
        assert answer.status_code == 201, answer.text
        self.ids[owner] = answer.json()["id"]
        if owner == USER:  # a message, so history pages are not always empty
            self._call("POST", f"/api/bots/{self.ids[owner]}/messages", owner, json={"text": "hello"})
        return self.ids[owner]

    def _call(self, method: str, path: str, user: str, **kwargs) -> requests.Response:
        return self.http.request(method, self.url + path, headers=auth_header(user), timeout=scaled(10), **kwargs)


def auth_header(user: str) -> dict[str, str]:
    claims = {"roles": ["admin"]} if user == ADMIN else {}
    return {"Authorization": f"Bearer {make_token(user, **claims)}"}


@pytest.fixture
def gateway(redis_url: str, redis_prefix: str) -> Iterator[tuple[str, Bots, requests.Session]]:
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    app_settings = Settings(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        jwt_secret=TEST_SECRET,
        in_process_workers=0,
        log_format="text",
        http_per_second=100_000,  # the fuzzer's requests would otherwise mostly be answered 429
    )
    server = LiveGateway(app_settings)
    http = requests.Session()
    try:
        yield server.url, Bots(server.url, http), http
    finally:
        http.close()
        server.close()
        logging.getLogger().removeHandler(errors)
    assert not errors.records, [record.getMessage() for record in errors.records]


@schema.parametrize()
@pytest.mark.parametrize("caller", [USER, ADMIN])
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_openapi_description(case, caller, gateway) -> None:
    """Every fuzzed request gets a documented answer and no server error."""
    url, bots, http = gateway
    target = next(bots.targets)
    # Values the fuzzer broke on purpose stay broken: a junk Authorization header must get 401.
    if "bot" in case.path_parameters and target != "generated" and not case.meta.is_negative_at(Location.PATH):
        case.path_parameters["bot"] = bots.id_for(target)
    headers = None if case.meta.is_negative_at(Location.HEADER) else auth_header(caller)
    case.call_and_validate(base_url=url, session=http, headers=headers, timeout=scaled(10))


@pytest.mark.parametrize(
    "query",
    [
        {"since": "1-2\n"},  # a regular expression's $ also matches before a final newline
        {"since": "\u0661\u0662-\u0663"},  # Arabic-Indic digits are digits to Python, not to Redis
        {"since": " 1-2"},
        {"limit": "5_0"},  # int() accepts these; the API does not
        {"limit": "+5"},
        {"limit": "\u0665"},
        {"limit": "9" * 5000},  # beyond int()'s digit limit
    ],
)
def test_lookalike_query_values_are_bad_requests(query: dict[str, str], gateway) -> None:
    """A since or limit that only looks valid is a 400 bad_request, never a server error."""
    url, bots, http = gateway
    bot = bots.id_for(USER)
    answer = http.get(f"{url}/api/bots/{bot}/messages", params=query, headers=auth_header(USER), timeout=scaled(10))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "bad_request"


@pytest.mark.parametrize(("dev_login", "max_text_length"), [(False, 4000), (True, 120)])
def test_served_document_describes_this_gateway(dev_login: bool, max_text_length: int, redis_url, redis_prefix) -> None:
    """GET /api/openapi.json needs no token, documents every route of the app and follows its settings."""
    app_settings = Settings(
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        jwt_secret=TEST_SECRET,
        in_process_workers=0,
        dev_login=dev_login,
        max_text_length=max_text_length,
    )
    server = LiveGateway(app_settings)
    try:
        answer = requests.get(f"{server.url}/api/openapi.json", timeout=scaled(10))
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in server.runner.app.router.routes()
            if route.method != "HEAD"
            and route.resource is not None
            and not route.resource.canonical.startswith("/static")
        }
    finally:
        server.close()
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert document == build_spec(max_text_length, dev_login)
    assert ("/api/dev/token" in document["paths"]) == dev_login
    text = document["paths"]["/api/bots/{bot}/messages"]["post"]["requestBody"]["content"]["application/json"]
    assert text["schema"]["properties"]["text"]["maxLength"] == max_text_length
    documented = {
        (method, path) for path, item in document["paths"].items() for method in item if method != "parameters"
    }
    assert documented == routes, "every route the app serves is documented, and only those"
    operations = list(schemathesis.openapi.from_dict(document).get_all_operations())
    assert len(operations) == len(routes)
    assert all(operation.ok() for operation in operations)
