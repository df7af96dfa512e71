"""The React example (clients/js/examples/react-chat) built with esbuild and driven in headless Chromium.

The example is served by its own development server (serve.mjs), which passes /api and /ws on to a
real single-process gateway, so the page and the gateway share an origin as in a deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser.test_page import api, webhook
from tests.conftest import make_token
from tests.procs import ROOT, GatewayNode, Proc, scaled, wait_until
from tests.wsclient import ChatSocket

pytestmark = pytest.mark.slow

TIMEOUT_MS = scaled(15_000)
PACKAGE = ROOT / "clients" / "js"
EXAMPLE = PACKAGE / "examples" / "react-chat"
SCREENSHOT = EXAMPLE / "screenshot.png"
NPM = shutil.which("npm")
LONG_TEXT = " ".join(f"word{i}" for i in range(40))


@pytest.fixture
def screenshot_path(tmp_path: Path) -> Path:
    """Where the test saves its screenshot: the committed one only with CHAT_UPDATE_SCREENSHOT=1."""
    return SCREENSHOT if os.environ.get("CHAT_UPDATE_SCREENSHOT") == "1" else tmp_path / "screenshot.png"


@pytest.fixture(scope="module")
def example_url(gateway: GatewayNode) -> Iterator[str]:
    """The example built from the package's sources and served in front of the gateway; yields its URL."""
    if NPM is None or not (PACKAGE / "node_modules").is_dir():
        pytest.skip("the JS package is not installed: run `npm ci` in clients/js")
    subprocess.run([NPM, "run", "--silent", "build:example"], cwd=PACKAGE, check=True, timeout=scaled(120))
    node = shutil.which("node")
    assert node, "npm without node"
    server = Proc([node, str(EXAMPLE / "serve.mjs"), "--gateway", gateway.url, "--port", "0"], name="react-example")
    try:
        wait_until(lambda: "listening on" in server.log() or not server.alive(), 10, "the example's server")
        match = re.search(r"listening on (http://\S+?)/? ", server.log())
        assert match, server.log()
        yield match.group(1)
    finally:
        server.terminate()


async def open_room(page: Page, url: str, token: str, bot: dict) -> None:
    """Sign in through the URL fragment and open ``bot``'s room."""
    await page.goto(f"{url}/#token={token}")
    await page.locator(f'[data-testid="bot-item"][data-bot-id="{bot["id"]}"]').click()
    await expect(page.get_by_test_id("room-title")).to_have_text(bot["name"])
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)


async def send(page: Page, text: str) -> None:
    composer = page.get_by_test_id("composer-input")
    await composer.fill(text)
    await composer.press("Enter")


def stored(page: Page):
    """The texts of the messages shown as stored (not streaming, not pending)."""
    return page.locator('[data-testid="message"][data-id] [data-testid="message-text"]')


class SocketSwitch:
    """Routes the page's WebSockets to the server; can kill the live one and refuse new ones."""

    def __init__(self) -> None:
        self.refuse = False
        self.live: list[WebSocketRoute] = []
        self.attempts = 0

    async def route(self, ws: WebSocketRoute) -> None:
        self.attempts += 1
        if self.refuse:
            await ws.close(code=1011, reason="refused by the test")
            return
        ws.connect_to_server()
        self.live.append(ws)

    async def kill(self) -> None:
        for ws in self.live:
            with contextlib.suppress(Exception):
                await ws.close(code=1011, reason="killed by the test")
        self.live.clear()


@contextlib.asynccontextmanager
async def streaming_bot(gateway: GatewayNode, token: str) -> AsyncIterator[tuple[dict, asyncio.Event]]:
    """A webhook bot that streams "Hel", then waits for the event, then "lo" and the whole "Hello"."""
    release = asyncio.Event()

    async def stream(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = body["message"]["text"]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        if text != "stream please":
            await response.write(json.dumps({"text": text}).encode() + b"\n")
            return response
        await response.write(b'{"delta": "Hel"}\n')
        await asyncio.wait_for(release.wait(), scaled(30))
        await response.write(b'{"delta": "lo"}\n{"text": "Hello"}\n')
        await response.write_eof()
        return response

    async with webhook(stream) as url:
        bot = await api(
            gateway, token, "POST", "/api/bots", {"name": "Streamer", "kind": "webhook", "config": {"url": url}}
        )
        yield bot, release


async def test_react_example_chats_streams_and_resumes(gateway, example_url, new_tab, screenshot_path):
    """BotChat joins, sends, streams a reply, shows typing, stops and starts the bot, and resumes a killed socket."""
    alice = make_token("alice", name="Alice", roles=["admin"])
    async with streaming_bot(gateway, alice) as (bot, release), aiohttp.ClientSession() as session:
        room = bot["id"]
        await api(gateway, alice, "PUT", f"/api/bots/{room}/members/bob")
        tab = await new_tab()
        page = tab.page
        switch = SocketSwitch()
        await page.route_web_socket(re.compile(r"/ws(\?|$)"), switch.route)
        await open_room(page, example_url, alice, bot)
        assert "token" not in page.url

        status = page.get_by_test_id("bot-status")
        await expect(status).to_have_attribute("data-status", "stopped")
        await page.get_by_test_id("bot-start").click()
        await expect(status).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)

        # The reply streams in: one growing bubble, the bot typing, then the final message.
        await send(page, "stream please")
        streaming = page.locator('[data-testid="message"][data-streaming="streaming"] [data-testid="message-text"]')
        await expect(streaming).to_have_text("Hel", timeout=TIMEOUT_MS)
        typing = page.get_by_test_id("typing")
        await expect(typing).to_be_visible()
        await expect(typing).to_have_attribute("data-bot", "true")
        release.set()
        await expect(stored(page)).to_have_text(["stream please", "Hello"], timeout=TIMEOUT_MS)
        await expect(streaming).to_have_count(0)
        progress = page.get_by_test_id("message-progress")
        await expect(progress).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)

        # Another user in the room: presence and typing.
        bob = await ChatSocket.connect(session, gateway.url, make_token("bob", name="Bob"))
        await bob.join(room)
        await expect(page.get_by_test_id("presence-count")).to_have_text("2", timeout=TIMEOUT_MS)
        await bob.send({"type": "typing", "room": room, "state": True})
        await expect(page.get_by_test_id("typing-text")).to_have_text("Bob is typing", timeout=TIMEOUT_MS)
        await page.screenshot(path=str(screenshot_path), animations="disabled")
        await bob.send({"type": "typing", "room": room, "state": False})
        await expect(typing).to_be_hidden(timeout=TIMEOUT_MS)

        # Stop and start the bot from the header.
        await page.get_by_test_id("bot-stop").click()
        await expect(status).to_have_attribute("data-status", re.compile("^(stopping|stopped)$"), timeout=TIMEOUT_MS)
        await expect(status).to_have_attribute("data-status", "stopped", timeout=TIMEOUT_MS)
        await page.get_by_test_id("bot-start").click()
        await expect(status).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)

        # The socket dies and new ones are refused while Bob writes and Alice writes offline.
        switch.refuse = True
        await switch.kill()
        conn = page.get_by_test_id("conn-state")
        await expect(conn).to_have_attribute("data-state", re.compile("^(reconnecting|fallback)$"), timeout=TIMEOUT_MS)
        for text in ("bob 1", "bob 2"):
            await bob.request({"type": "message", "room": room, "text": text}, "ack")
        await send(page, "written offline")
        await expect(page.locator('[data-testid="message"][data-pending="sending"]')).to_have_count(1)
        switch.refuse = False
        await expect(conn).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS * 2)

        # Every user message gets its echo: once the page shows all eight, it must equal history.
        users = ["stream please", "bob 1", "bob 2", "written offline"]
        await expect(stored(page)).to_have_count(2 * len(users), timeout=TIMEOUT_MS)
        history = (await api(gateway, alice, "GET", f"/api/bots/{room}/messages?limit=100"))["messages"]
        assert [m["text"] for m in history if m["from"]["kind"] == "user"] == users
        await expect(stored(page)).to_have_text([m["text"] for m in history])
        shown_ids = await page.locator('[data-testid="message"][data-id]').evaluate_all(
            "(els) => els.map((el) => el.dataset.id)"
        )
        assert shown_ids == [m["id"] for m in history], "each message once, in history order"
        await expect(page.locator('[data-testid="message"][data-pending]')).to_have_count(0)
        await bob.close()


async def test_react_example_falls_back_to_http_while_the_socket_is_refused(gateway, example_url, new_tab):
    """With every WebSocket refused, BotChat sends over HTTP and shows the bot's reply from polling."""
    erin = make_token("erin", name="Erin")
    bot = await api(gateway, erin, "POST", "/api/bots", {"name": "Polled", "kind": "echo"})
    await api(gateway, erin, "POST", f"/api/bots/{bot['id']}/start")
    page = (await new_tab()).page
    switch = SocketSwitch()
    switch.refuse = True
    await page.route_web_socket(re.compile(r"/ws(\?|$)"), switch.route)
    await page.goto(f"{example_url}/#token={erin}")
    await page.locator(f'[data-testid="bot-item"][data-bot-id="{bot["id"]}"]').click()
    conn = page.get_by_test_id("conn-state")
    await expect(conn).to_have_attribute("data-state", "fallback", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("bot-status")).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
    await send(page, "over plain HTTP")
    await expect(stored(page)).to_have_text(["over plain HTTP", "over plain HTTP"], timeout=TIMEOUT_MS)
    await expect(page.locator('[data-testid="message"][data-own="true"]')).to_have_count(1)
    assert switch.attempts >= 3

    switch.refuse = False
    await expect(conn).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS * 2)
    await send(page, "live again")
    await expect(stored(page)).to_have_text(["over plain HTTP"] * 2 + ["live again"] * 2, timeout=TIMEOUT_MS)


async def test_react_example_stops_a_streaming_reply(gateway, example_url, new_tab):
    """BotChat offers Stop while the bot's reply streams; Stop ends it as cancelled with its text so far."""
    uma = make_token("uma", name="Uma")
    bot = await api(gateway, uma, "POST", "/api/bots", {"name": "Pacer", "kind": "echo", "config": {"pace": 0.1}})
    await api(gateway, uma, "POST", f"/api/bots/{bot['id']}/start")
    page = (await new_tab()).page
    await open_room(page, example_url, uma, bot)
    await send(page, LONG_TEXT)
    streaming = page.locator('[data-testid="message"][data-streaming="streaming"] [data-testid="message-text"]')
    await expect(streaming).to_have_text(re.compile(r"^word0 word1 word2 "), timeout=TIMEOUT_MS)
    shown = await streaming.text_content()
    await page.get_by_test_id("reply-stop").click()

    cancelled = page.locator('[data-testid="message"][data-state="cancelled"]')
    await expect(cancelled).to_have_count(1, timeout=TIMEOUT_MS)
    await expect(cancelled.get_by_test_id("message-note")).to_have_text("stopped")
    await expect(streaming).to_have_count(0)
    await expect(page.get_by_test_id("reply-stop")).to_have_count(0)
    await expect(page.get_by_test_id("message-progress")).to_have_attribute("data-state", "cancelled")
    partial = await cancelled.get_by_test_id("message-text").text_content()
    assert partial.startswith(shown)
    assert len(partial.rstrip()) < len(LONG_TEXT)
    history = (await api(gateway, uma, "GET", f"/api/bots/{bot['id']}/messages"))["messages"]
    assert [(m["text"], m.get("state")) for m in history] == [(LONG_TEXT, None), (partial, "cancelled")]
