"""The chat page and the browser client in real headless Chromium against a real gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator

import aiohttp
import jwt
import pytest
from aiohttp import web
from playwright.async_api import WebSocketRoute, expect

from tests.browser.conftest import ARTIFACTS
from tests.conftest import make_token
from tests.procs import GatewayNode, scaled

pytestmark = pytest.mark.slow

TIMEOUT_MS = scaled(15_000)


async def api(gateway: GatewayNode, token: str, method: str, path: str, body: dict | None = None) -> dict | None:
    """Call the gateway's HTTP API as the token's user."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, gateway.url + path, json=body, headers=headers) as res,
    ):
        assert res.status < 300, f"{method} {path} -> {res.status}: {await res.text()}"
        return None if res.status == 204 else await res.json()


@contextlib.asynccontextmanager
async def webhook(answer) -> AsyncIterator[str]:
    """A webhook endpoint on loopback answering every POST with ``answer(request)``; yields its URL."""
    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, shutdown_timeout=1)  # a test that failed mid-stream must not hang here
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


async def open_room_as(new_tab, gateway: GatewayNode, token: str, bot: dict):
    """A page signed in with ``token`` (through the URL fragment) showing ``bot``'s room."""
    page = (await new_tab()).page
    await page.goto(f"{gateway.url}/#token={token}")
    await page.locator(f'[data-testid="bot-item"][data-bot-id="{bot["id"]}"]').click()
    await expect(page.get_by_test_id("room-title")).to_have_text(bot["name"])
    return page


async def create_bot_on_page(page, name: str, delay: float) -> None:
    """Create an echo bot with the sidebar form, open its room and make sure it runs."""
    await page.get_by_test_id("bot-name").fill(name)
    await page.get_by_test_id("bot-delay").fill(str(delay))
    await page.get_by_test_id("bot-create").click()
    await expect(page.get_by_test_id("room-title")).to_have_text(name)
    await ensure_running(page)


async def ensure_running(page) -> None:
    status = page.get_by_test_id("bot-status")
    await expect(status).to_have_attribute("data-status", re.compile(r"^(running|starting|stopped)$"))
    if await page.get_by_test_id("bot-start").is_enabled():
        await page.get_by_test_id("bot-start").click()
    await expect(status).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)


async def send_on_page(page, text: str) -> None:
    composer = page.get_by_test_id("composer-input")
    await composer.fill(text)
    await composer.press("Enter")


def bot_replies(page):
    return page.locator('[data-testid="message"][data-kind="bot"]:not([data-streaming]) [data-testid="message-text"]')


async def test_page_chats_with_an_echo_bot(gateway, new_tab):
    """The page signs in, creates an echo bot, shows the bot typing and then its reply."""
    tab = await new_tab()
    page = tab.page
    await page.goto(gateway.url + "/")
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("me-name")).to_have_text(re.compile(r"\S"))

    await create_bot_on_page(page, "Echo", 0.5)
    await expect(page.get_by_test_id("presence-count")).to_have_text("1")
    await send_on_page(page, "hello, bot")

    own = page.locator('[data-testid="message"][data-own="true"] [data-testid="message-text"]')
    await expect(own).to_have_text(["hello, bot"])
    typing = page.get_by_test_id("typing")
    await expect(typing).to_be_visible(timeout=TIMEOUT_MS)
    await expect(typing).to_have_attribute("data-bot", "true")
    await expect(bot_replies(page)).to_have_text(["hello, bot"], timeout=TIMEOUT_MS)
    await expect(typing).to_be_hidden(timeout=TIMEOUT_MS)
    progress = page.locator('[data-testid="message"][data-own="true"] [data-testid="message-progress"]')
    await expect(progress).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "chat-page.png"), animations="disabled")

    token = await page.evaluate("sessionStorage.getItem('chat.token')")
    assert token, "the page keeps its token in sessionStorage"
    assert token not in await page.content()
    assert not any(token in line for line in tab.console)


async def test_page_grows_a_streamed_reply_until_the_final_message(gateway, new_tab):
    """Delta frames grow one bot bubble, which the final message then replaces."""
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"delta": "Hel"}\n')
        await asyncio.wait_for(release.wait(), scaled(30))
        await response.write(b'{"delta": "lo"}\n{"text": "Hello"}\n')
        await response.write_eof()
        return response

    admin = make_token("grace", roles=["admin"])  # webhook bots need the admin role
    async with webhook(stream) as url:
        bot = await api(
            gateway, admin, "POST", "/api/bots", {"name": "Streamer", "kind": "webhook", "config": {"url": url}}
        )
        page = await open_room_as(new_tab, gateway, admin, bot)
        await ensure_running(page)
        await send_on_page(page, "stream please")

        streaming = page.locator('[data-testid="message"][data-streaming="true"]')
        await expect(streaming.get_by_test_id("message-text")).to_have_text("Hel", timeout=TIMEOUT_MS)
        progress = page.locator('[data-testid="message"][data-own="true"] [data-testid="message-progress"]')
        await expect(progress).to_have_attribute("data-state", "executing")
        release.set()
        await expect(bot_replies(page)).to_have_text(["Hello"], timeout=TIMEOUT_MS)
        await expect(streaming).to_have_count(0)
        await expect(progress).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)


async def test_page_marks_a_message_the_bot_failed_on(gateway, new_tab):
    """A request the bot cannot answer shows the failed state on the user's message."""

    async def broken(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "nope"}, status=500)

    admin = make_token("ivan", roles=["admin"])
    async with webhook(broken) as url:
        bot = await api(
            gateway, admin, "POST", "/api/bots", {"name": "Broken", "kind": "webhook", "config": {"url": url}}
        )
        page = await open_room_as(new_tab, gateway, admin, bot)
        await ensure_running(page)
        await send_on_page(page, "will fail")
        progress = page.locator('[data-testid="message"][data-own="true"] [data-testid="message-progress"]')
        await expect(progress).to_have_attribute("data-state", "failed", timeout=TIMEOUT_MS)
        await expect(progress).to_have_text(re.compile(r"^failed"))
        await expect(bot_replies(page)).to_have_count(0)


async def test_page_falls_back_to_http_when_the_websocket_is_blocked(gateway, new_tab):
    """With every WebSocket refused, the page sends by POST and receives the reply by polling."""
    tab = await new_tab()
    page = tab.page
    refused = 0

    async def refuse(ws: WebSocketRoute) -> None:
        # page.route() does not see WebSockets; route_web_socket() does, and this never connects upstream.
        nonlocal refused
        refused += 1
        await ws.close(code=1011, reason="blocked by the test")

    await page.route_web_socket(re.compile(r"/ws(\?|$)"), refuse)
    token = make_token("erin")
    await page.goto(f"{gateway.url}/#token={token}")
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "fallback", timeout=TIMEOUT_MS)
    assert "token" not in page.url
    assert refused >= 3

    await create_bot_on_page(page, "Fallback echo", 0)
    await send_on_page(page, "over plain HTTP")
    await expect(bot_replies(page)).to_have_text(["over plain HTTP"], timeout=TIMEOUT_MS)
    own = page.locator('[data-testid="message"][data-own="true"]')
    await expect(own).to_have_count(1)
    await expect(own).not_to_have_attribute("data-pending", re.compile("."))
    assert token not in await page.content()


RECORD_CONNECTION_STATES = """
document.addEventListener("DOMContentLoaded", () => {
  const el = document.querySelector('[data-testid="conn-state"]');
  window.connectionStates = [el.dataset.state];
  const observer = new MutationObserver(() => window.connectionStates.push(el.dataset.state));
  observer.observe(el, { attributes: true, attributeFilter: ["data-state"] });
});
"""


async def test_page_returns_to_the_websocket_once_it_opens(gateway, new_tab):
    """After falling back to HTTP the page keeps trying the WebSocket and switches back when it connects."""
    page = (await new_tab()).page
    attempts = 0

    async def refuse_three(ws: WebSocketRoute) -> None:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            await ws.close(code=1011, reason="blocked by the test")
        else:
            ws.connect_to_server()

    await page.add_init_script(RECORD_CONNECTION_STATES)
    await page.route_web_socket(re.compile(r"/ws(\?|$)"), refuse_three)
    await page.goto(f"{gateway.url}/#token={make_token('heidi')}")
    await page.wait_for_function(
        "window.connectionStates?.includes('fallback') && window.connectionStates.at(-1) === 'open'",
        timeout=TIMEOUT_MS,
    )
    states = await page.evaluate("window.connectionStates")
    assert states.index("fallback") < len(states) - 1, states
    assert attempts == 4

    await create_bot_on_page(page, "Back online", 0)
    await send_on_page(page, "live again")
    await expect(bot_replies(page)).to_have_text(["live again"], timeout=TIMEOUT_MS)
    assert await page.get_by_test_id("conn-state").get_attribute("data-state") == "open"


async def test_page_shows_another_users_presence_typing_and_messages(gateway, new_tab):
    """Two users in one room see each other's presence, typing and messages."""
    alice, bob = make_token("alice", name="Alice"), make_token("bob", name="Bob")
    bot = await api(gateway, alice, "POST", "/api/bots", {"name": "Shared", "kind": "echo", "config": {"delay": 0.2}})
    await api(gateway, alice, "PUT", f"/api/bots/{bot['id']}/members/bob")

    pages = {user: await open_room_as(new_tab, gateway, token, bot) for user, token in (("alice", alice), ("bob", bob))}

    await expect(pages["alice"].get_by_test_id("presence-count")).to_have_text("2", timeout=TIMEOUT_MS)
    await expect(pages["bob"].get_by_test_id("presence-count")).to_have_text("2")
    await ensure_running(pages["alice"])

    await pages["bob"].get_by_test_id("composer-input").press_sequentially("hi alice")
    await expect(pages["alice"].get_by_test_id("typing-text")).to_have_text("Bob is typing", timeout=TIMEOUT_MS)
    await pages["bob"].get_by_test_id("composer-input").press("Enter")

    others = pages["alice"].locator('[data-testid="message"][data-kind="user"][data-own="false"]')
    await expect(others.get_by_test_id("message-text")).to_have_text(["hi alice"], timeout=TIMEOUT_MS)
    await expect(bot_replies(pages["alice"])).to_have_text(["hi alice"], timeout=TIMEOUT_MS)
    await expect(bot_replies(pages["bob"])).to_have_text(["hi alice"], timeout=TIMEOUT_MS)

    await pages["bob"].context.close()
    await expect(pages["alice"].get_by_test_id("presence-count")).to_have_text("1", timeout=TIMEOUT_MS)


async def test_client_does_not_resend_a_message_stored_before_the_connection_dropped(gateway, new_tab):
    """A message whose ack was lost is recognised after reconnecting and is stored only once."""
    token = make_token("carol")
    bot = await api(gateway, token, "POST", "/api/bots", {"name": "Quiet", "kind": "echo"})
    page = (await new_tab()).page
    sent: list[dict] = []
    connections = 0

    async def route(ws: WebSocketRoute) -> None:
        nonlocal connections
        connections += 1
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "message":
                sent.append(frame)
            server.send(message)

        ws.on_message(from_page)
        if connections > 1:
            return
        dropped = False

        async def from_server(message: str | bytes) -> None:
            nonlocal dropped
            if dropped:
                return
            frame = json.loads(message)
            # the ack and the room's copy of the message (which carries the client_id) come in
            # either order, usually the copy first: either one would tell the page it was stored
            if frame["type"] == "ack" or (frame["type"] == "message" and frame.get("client_id")):
                dropped = True  # the server stored the message; the page never hears of it
                await ws.close(code=1012, reason="dropped by the test")
                return
            ws.send(message)

        server.on_message(from_server)

    await page.route_web_socket(re.compile(r"/ws(\?|$)"), route)
    await page.goto(gateway.url + "/healthz")
    result = await page.evaluate(
        """async ([bot, token]) => {
          const { ChatClient } = await import("/static/chat-client.js");
          const client = new ChatClient({ token, backoffBaseMs: 50 });
          const states = [];
          client.on("state", (s) => states.push(s.state));
          client.connect();
          await client.join(bot);
          const ack = await client.send(bot, "exactly once");
          const history = await client.history(bot);
          client.close();
          return { ack, states, history };
        }""",
        [bot["id"], token],
    )

    assert connections == 2
    assert [f["text"] for f in sent] == ["exactly once"]
    assert "reconnecting" in result["states"]
    stored = [m for m in result["history"]["messages"] if m["from"]["kind"] == "user"]
    assert [m["text"] for m in stored] == ["exactly once"]
    assert result["ack"]["id"] == stored[0]["id"]


async def test_client_refreshes_its_token_before_it_expires(gateway, new_tab):
    """The client asks for a new token ahead of exp and hands it to the live connection."""
    short, fresh = make_token("dave", ttl=4), make_token("dave", ttl=3600)
    page = (await new_tab()).page
    await page.goto(gateway.url + "/healthz")
    result = await page.evaluate(
        """async ([token, fresh, timeoutMs]) => {
          const { ChatClient } = await import("/static/chat-client.js");
          let asked = 0;
          const client = new ChatClient({ token, onTokenRefresh: async () => { asked += 1; return fresh; } });
          const authOk = new Promise((resolve, reject) => {
            client.on("auth_ok", resolve);
            setTimeout(() => reject(new Error("no auth_ok")), timeoutMs);
          });
          client.connect();
          const frame = await authOk;
          const state = client.state;
          client.close();
          return { exp: frame.exp, state, asked };
        }""",
        [short, fresh, TIMEOUT_MS],
    )
    assert result == {"exp": jwt.decode(fresh, options={"verify_signature": False})["exp"], "state": "open", "asked": 1}


async def test_page_asks_for_a_token_when_dev_login_is_off(gateway_without_dev_login, new_tab):
    """Without development sign-in the page offers a token field, and a pasted token signs in."""
    page = (await new_tab()).page
    await page.goto(gateway_without_dev_login.url + "/")
    await expect(page.get_by_test_id("signin")).to_be_visible(timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("dev-login-form")).to_be_hidden()
    token = make_token("frank", name="Frank")
    await page.get_by_test_id("token-input").fill(token)
    await page.get_by_test_id("token-submit").click()
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("me-name")).to_have_text("Frank")
    await expect(page.get_by_test_id("token-input")).to_have_value("")
    assert token not in await page.content()
