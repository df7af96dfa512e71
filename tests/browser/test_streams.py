"""Streamed replies on the chat page in headless Chromium: a reload mid-reply, Stop in two tabs, resends.

The echo bot with ``pace`` streams its reply word by word (0.1 s apart: about four seconds for
the 40 words sent here), which gives the tests time to reload or stop while it is being written.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
from playwright.async_api import Page, WebSocketRoute, expect

from tests.browser.test_page import api, bot_replies, ensure_running, open_room_as, send_on_page
from tests.conftest import make_token
from tests.procs import GatewayNode, scaled

pytestmark = pytest.mark.slow

TIMEOUT_MS = scaled(15_000)
LONG_TEXT = " ".join(f"word{i}" for i in range(40))
STREAMING = '[data-testid="message"][data-streaming="true"]'
CANCELLED = '[data-testid="message"][data-state="cancelled"]'

# Every text the page shows in a streaming bubble, in order, once each (set again on every load).
RECORD_REPLY_TEXTS = """
document.addEventListener("DOMContentLoaded", () => {
  window.replyTexts = [];
  const record = () => {
    const el = document.querySelector('[data-streaming="true"] [data-testid="message-text"]');
    if (el && el.textContent !== window.replyTexts.at(-1)) window.replyTexts.push(el.textContent);
  };
  new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true });
});
"""


async def pacing_bot(gateway: GatewayNode, token: str, name: str) -> dict:
    """A running echo bot that streams its replies a word every 0.1 s."""
    bot = await api(gateway, token, "POST", "/api/bots", {"name": name, "kind": "echo", "config": {"pace": 0.1}})
    await api(gateway, token, "POST", f"/api/bots/{bot['id']}/start")
    return bot


def streaming_text(page: Page):
    return page.locator(f"{STREAMING} [data-testid='message-text']")


def words(n: int) -> re.Pattern[str]:
    """The streamed text once it holds at least the first ``n`` words."""
    return re.compile("^" + re.escape(" ".join(f"word{i}" for i in range(n)) + " "))


async def history(gateway: GatewayNode, token: str, room: str) -> list[dict]:
    return (await api(gateway, token, "GET", f"/api/bots/{room}/messages?limit=100"))["messages"]


async def test_page_reloaded_mid_reply_shows_the_text_so_far_and_grows_it_to_the_end(gateway, new_tab):
    """After a reload mid-reply the page shows the text so far at once, then the rest, then the final reply."""
    token = make_token("rita", name="Rita")
    tab = await new_tab()
    page = tab.page
    await page.add_init_script(RECORD_REPLY_TEXTS)
    await page.goto(f"{gateway.url}/#token={token}")
    await page.get_by_test_id("bot-name").fill("Pacer")
    await page.get_by_test_id("bot-pace").fill("0.1")
    await page.get_by_test_id("bot-create").click()
    await expect(page.get_by_test_id("room-title")).to_have_text("Pacer")
    await ensure_running(page)
    room = await page.locator('[data-testid="bot-item"][aria-current="true"]').get_attribute("data-bot-id")
    bot = await api(gateway, token, "GET", f"/api/bots/{room}")
    assert bot["config"] == {"pace": 0.1}
    await send_on_page(page, LONG_TEXT)
    await expect(streaming_text(page)).to_have_text(words(4), timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("reply-stop")).to_be_visible()

    await page.reload()
    # The page opens the same room again and the reply in progress comes back as it stands.
    await expect(page.get_by_test_id("room-title")).to_have_text("Pacer", timeout=TIMEOUT_MS)
    await expect(streaming_text(page)).to_have_text(words(4), timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("reply-stop")).to_be_visible()
    await expect(bot_replies(page)).to_have_text([LONG_TEXT], timeout=TIMEOUT_MS)
    await expect(page.locator(STREAMING)).to_have_count(0)
    await expect(page.get_by_test_id("reply-stop")).to_have_count(0)

    texts = await page.evaluate("window.replyTexts")
    assert len(texts) >= 2, f"the reply kept growing after the reload: {texts}"
    assert texts[0].startswith("word0 word1 word2 word3 "), f"the first text shown is the text so far: {texts[0]!r}"
    for before, after in itertools.pairwise(texts):
        assert after.startswith(before), f"{after!r} does not continue {before!r}"
    assert LONG_TEXT.startswith(texts[-1].rstrip())
    own = page.locator('[data-testid="message"][data-own="true"] [data-testid="message-text"]')
    await expect(own).to_have_text([LONG_TEXT])
    stored = await history(gateway, token, bot["id"])
    assert [(m["from"]["kind"], m["text"], m.get("state")) for m in stored] == [
        ("user", LONG_TEXT, None),
        ("bot", LONG_TEXT, None),
    ]


async def test_stop_in_one_tab_ends_the_reply_as_cancelled_in_both(gateway, new_tab):
    """Stop in the second tab of the same user cancels the reply in both tabs, with the same text so far."""
    sam, bob = make_token("sam", name="Sam"), make_token("bob", name="Bob")
    bot = await pacing_bot(gateway, sam, "Stoppable")
    await api(gateway, sam, "PUT", f"/api/bots/{bot['id']}/members/bob")
    first = await open_room_as(new_tab, gateway, sam, bot)
    second = await open_room_as(new_tab, gateway, sam, bot)
    other = await open_room_as(new_tab, gateway, bob, bot)
    for page in (first, second, other):
        await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    await expect(first.get_by_test_id("presence-count")).to_have_text("2", timeout=TIMEOUT_MS)

    await send_on_page(first, LONG_TEXT)
    for page in (first, second, other):
        await expect(streaming_text(page)).to_have_text(words(3), timeout=TIMEOUT_MS)
    await expect(first.get_by_test_id("reply-stop")).to_be_visible()
    await expect(other.get_by_test_id("reply-stop")).to_have_count(0)  # neither the sender nor the owner
    shown = await streaming_text(second).text_content()
    await second.get_by_test_id("reply-stop").click()

    cancelled = {}
    for name, page in (("first", first), ("second", second), ("other", other)):
        text = page.locator(f"{CANCELLED} [data-testid='message-text']")
        await expect(text).to_have_count(1, timeout=TIMEOUT_MS)
        await expect(page.locator(STREAMING)).to_have_count(0)
        await expect(page.get_by_test_id("reply-stop")).to_have_count(0)
        await expect(page.locator(CANCELLED).get_by_test_id("message-note")).to_have_text("stopped")
        cancelled[name] = await text.text_content()
    progress = first.locator('[data-testid="message"][data-own="true"] [data-testid="message-progress"]')
    await expect(progress).to_have_attribute("data-state", "cancelled", timeout=TIMEOUT_MS)
    assert cancelled["first"] == cancelled["second"] == cancelled["other"]
    partial = cancelled["first"]
    assert partial.startswith(shown), f"{partial!r} holds at least what was shown at Stop ({shown!r})"
    assert LONG_TEXT.startswith(partial.rstrip())
    assert len(partial.rstrip()) < len(LONG_TEXT)

    # Nothing more of it arrives: the next reply comes whole after it, and the stopped one is unchanged.
    await send_on_page(first, "after stop")
    for page in (first, second):
        await expect(bot_replies(page)).to_have_text([partial, "after stop"], timeout=TIMEOUT_MS)
    stored = await history(gateway, sam, bot["id"])
    assert [(m["from"]["kind"], m["text"], m.get("state")) for m in stored] == [
        ("user", LONG_TEXT, None),
        ("bot", partial, "cancelled"),
        ("user", "after stop", None),
        ("bot", "after stop", None),
    ]


async def test_a_resend_after_a_killed_socket_is_stored_once_and_matched_by_client_id(gateway, new_tab):
    """A send whose ack and copy were lost is sent again with its client_id: one message, the first id."""
    token = make_token("tess")
    bot = await api(gateway, token, "POST", "/api/bots", {"name": "Stopped echo", "kind": "echo"})
    room = bot["id"]
    await api(gateway, token, "POST", f"/api/bots/{room}/messages", {"text": "before"})
    page = (await new_tab()).page
    sent: list[dict] = []
    connections = 0
    other_copy: dict = {}

    async def route(ws: WebSocketRoute) -> None:
        nonlocal connections
        connections += 1
        number = connections
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "message":
                sent.append(frame)
            server.send(message)

        ws.on_message(from_page)
        dropping = False

        async def from_server(message: str | bytes) -> None:
            nonlocal dropping
            frame = json.loads(message)
            ours = bool(sent) and frame.get("client_id") == sent[0]["client_id"]
            if number == 1 and (dropping or frame["type"] == "ack" or ours):
                if not dropping:
                    # Stored, but the page hears nothing of it. The same user then sends the same
                    # text from another tab (its own client_id) before this one reconnects.
                    dropping = True
                    other_copy.update(
                        await api(
                            gateway,
                            token,
                            "POST",
                            f"/api/bots/{room}/messages",
                            {"text": "exactly once", "client_id": "other-tab-1"},
                        )
                    )
                    await ws.close(code=1012, reason="dropped by the test")
                return
            if number == 2 and frame["type"] == "message" and ours:
                return  # the replayed copy is lost too: the page must send it again
            ws.send(message)

        server.on_message(from_server)

    await page.route_web_socket(re.compile(r"/ws(\?|$)"), route)
    await page.goto(gateway.url + "/healthz")
    result = await page.evaluate(
        """async ([bot, token]) => {
          const { ChatClient } = await import("/static/chat-client.js");
          const client = new ChatClient({ token, backoffBaseMs: 50, replayWaitMs: 300 });
          const states = [];
          client.on("state", (s) => states.push(s.state));
          client.connect();
          await client.join(bot);
          const ack = await client.send(bot, "exactly once");
          const history = await client.history(bot);
          client.close();
          return { ack, states, history };
        }""",
        [room, token],
    )

    assert connections == 2
    assert "reconnecting" in result["states"]
    assert [f["text"] for f in sent] == ["exactly once", "exactly once"], "sent again after the reconnect"
    assert sent[0]["client_id"] == sent[1]["client_id"]
    messages = result["history"]["messages"]
    assert [m["text"] for m in messages] == ["before", "exactly once", "exactly once"]
    ours = [m for m in messages if m.get("client_id") == sent[0]["client_id"]]
    assert len(ours) == 1, "the resend stored nothing"
    assert result["ack"]["id"] == ours[0]["id"] != other_copy["id"], "matched by client_id, not by text"
