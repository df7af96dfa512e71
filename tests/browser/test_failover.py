"""The chat page behind nginx survives the loss of the gateway node it is connected to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from playwright.async_api import Page, WebSocket, expect

from tests.browser.conftest import ARTIFACTS, Topology
from tests.procs import make_token, scaled, wait_until
from tests.wsclient import ChatSocket

pytestmark = pytest.mark.slow

TIMEOUT_MS = scaled(15_000)
# nginx may send a reconnect to the dead node first and the client backs off between attempts.
RECOVERY_S = scaled(30)
# The bot thinks this long before each answer, and the sender waits for the answer before the next
# message: about eight messages a second, under the gateway's per-connection frame rate limit.
BOT_DELAY_S = 0.1
# Bounds the sender if the page never comes back, and keeps the room (answers included) inside the
# 1000 messages of history a rejoin can replay.
SENDS_LIMIT = 400


@dataclass
class PageSockets:
    """Every frame the page's WebSockets receive (with the moment Python saw it) and send."""

    frames: list[tuple[float, int, dict[str, Any]]] = field(default_factory=list)  # (time, socket no, frame)
    sent: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (socket no, frame)
    sockets: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def attach(self, page: Page) -> None:
        page.on("websocket", self._on_socket)

    def _on_socket(self, ws: WebSocket) -> None:
        self.sockets += 1
        number = self.sockets
        ws.on("framereceived", lambda payload: self._on_frame(number, payload))
        ws.on("framesent", lambda payload: self._on_sent(number, payload))

    def _on_frame(self, number: int, payload: str | bytes) -> None:
        self.frames.append((time.monotonic(), number, orjson.loads(payload)))
        self.changed.set()

    def _on_sent(self, number: int, payload: str | bytes) -> None:
        self.sent.append((number, orjson.loads(payload)))
        self.changed.set()

    def welcomes(self) -> list[tuple[float, int, str]]:
        return [(at, number, f["node"]) for at, number, f in self.frames if f["type"] == "welcome"]

    def of_socket(self, number: int) -> list[dict[str, Any]]:
        return [f for _, n, f in self.frames if n == number]

    async def wait_for(self, predicate, timeout: float, what: str):
        """The first true value of ``predicate()``, re-checked after every frame."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        return value


@dataclass
class Sent:
    """A message the server acknowledged."""

    id: str
    text: str


@dataclass
class Sender:
    """Another user who keeps posting into the room over its own WebSocket, one message per bot answer."""

    socket: ChatSocket
    room: str
    sent: list[Sent] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        for i in range(SENDS_LIMIT):
            if self.stop.is_set():
                return
            text = f"bob {i:03d}"
            ack = await self.socket.request({"type": "message", "room": self.room, "text": text}, "ack")
            assert ack["type"] == "ack", ack
            self.sent.append(Sent(str(ack["id"]), text))
            self.progress.set()
            # Pacing on the bot's answer: no timer, and never faster than the bot's think time.
            await self.socket.expect("message", timeout=scaled(15), reply_to=ack["id"])
        raise AssertionError(f"the page did not recover within {SENDS_LIMIT} messages")

    async def wait_for_count(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.sent) < count:
            self.progress.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the sender got {len(self.sent)} of {count} acks")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), remaining)


async def api(lb_url: str, token: str, method: str, path: str, body: dict | None = None) -> Any:
    """Call the HTTP API through nginx as the token's user."""
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=scaled(10))) as session,
        session.request(method, lb_url + path, json=body, headers=headers) as res,
    ):
        assert res.status < 300, f"{method} {path} -> {res.status}: {await res.text()}"
        return None if res.status == 204 else await res.json()


async def connect_avoiding(session: aiohttp.ClientSession, lb_url: str, token: str, node: str) -> ChatSocket:
    """A WebSocket through nginx that landed on a node other than ``node`` (nginx takes turns)."""
    for _ in range(10):
        socket = await ChatSocket.connect(session, lb_url, token)
        if socket.welcome["node"] != node:
            return socket
        await socket.close()
    raise AssertionError(f"nginx sent ten connections in a row to {node}")


def signal_node(topology: Topology, node: str, signum: int) -> None:
    """Signal a gateway by its recorded PID, after checking the PID is still that gateway."""
    pid = topology.gateway_pids[node]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert f"--node-id {node}" in cmdline, f"PID {pid} is no longer {node}: {cmdline}"
    os.kill(pid, signum)


def freeze_node(topology: Topology, node: str) -> None:
    """SIGSTOP a gateway and wait until it is stopped: from then on it reads and forwards nothing."""
    signal_node(topology, node, signal.SIGSTOP)
    stat = Path(f"/proc/{topology.gateway_pids[node]}/stat")
    wait_until(lambda: stat.read_text().rsplit(")", 1)[1].split()[0] == "T", 5, f"{node} to stop")


ROOM_MESSAGES = '[data-testid="message"]:not([data-streaming])'
CAUGHT_UP = """([ids]) => {
  if (document.querySelector('[data-testid="conn-state"]').dataset.state !== "open") return false;
  return ids.every((id) => document.querySelector(`[data-testid="message"][data-id="${id}"]`));
}"""


@dataclass
class Scene:
    """Alice's page in a running echo bot's room, connected through nginx to ``victim``."""

    cluster: Topology
    page: Page
    sockets: PageSockets
    room: str
    alice: str  # tokens
    bob: str
    victim: str  # the node the page is connected to
    survivor: str
    first_socket: int

    async def send_on_page(self, text: str) -> None:
        composer = self.page.get_by_test_id("composer-input")
        await composer.fill(text)
        await composer.press("Enter")

    async def reconnection(self) -> tuple[int, str]:
        """Wait for the page's next welcome; return its socket number and node."""
        _, number, node = await self.sockets.wait_for(
            lambda: next((w for w in self.sockets.welcomes() if w[1] != self.first_socket), None),
            RECOVERY_S,
            "the page to reconnect",
        )
        return number, node

    async def history(self) -> list[dict[str, Any]]:
        return (await api(self.cluster.lb_url, self.alice, "GET", f"/api/bots/{self.room}/messages?limit=1000"))[
            "messages"
        ]

    def on_wire(self) -> list[str]:
        """Ids of the message frames the page received, over all its sockets, in order."""
        return [str(f["id"]) for _, _, f in self.sockets.frames if f["type"] == "message"]

    async def expect_exactly(self, history: list[dict[str, Any]]) -> None:
        """The page shows ``history`` (each message once, in order) and received each message once."""
        texts = self.page.locator(f"{ROOM_MESSAGES} [data-testid='message-text']")
        await expect(texts).to_have_text([m["text"] for m in history], timeout=TIMEOUT_MS)
        shown_ids = await self.page.locator(ROOM_MESSAGES).evaluate_all("(els) => els.map((el) => el.dataset.id)")
        assert shown_ids == [str(m["id"]) for m in history]
        # The page de-duplicates by id, so also count what the servers sent it.
        await self.sockets.wait_for(lambda: len(self.on_wire()) >= len(history), scaled(10), "the last frames")
        assert self.on_wire() == [str(m["id"]) for m in history]


async def open_scene(cluster: Topology, new_tab) -> Scene:
    """Create and start an echo bot shared with bob, open alice's page on it and say hello."""
    lb = cluster.lb_url
    alice = make_token("alice", secret=cluster.secret, name="Alice")
    bob = make_token("bob", secret=cluster.secret, name="Bob")
    config = {"delay": BOT_DELAY_S}
    bot = await api(lb, alice, "POST", "/api/bots", {"name": "Failover echo", "kind": "echo", "config": config})
    room = bot["id"]
    await api(lb, alice, "PUT", f"/api/bots/{room}/members/bob")
    await api(lb, alice, "POST", f"/api/bots/{room}/start")

    page = (await new_tab()).page
    sockets = PageSockets()
    sockets.attach(page)
    await page.goto(f"{lb}/#token={alice}")
    await page.locator(f'[data-testid="bot-item"][data-bot-id="{room}"]').click()
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open", timeout=TIMEOUT_MS)
    await expect(page.get_by_test_id("bot-status")).to_have_attribute("data-status", "running", timeout=TIMEOUT_MS)
    _, first_socket, victim = await sockets.wait_for(lambda: next(iter(sockets.welcomes()), None), 5, "welcome")
    survivor = next(node for node in cluster.gateway_pids if node != victim)
    scene = Scene(cluster, page, sockets, room, alice, bob, victim, survivor, first_socket)

    await scene.send_on_page("hello from the page")
    bot_texts = page.locator(f'{ROOM_MESSAGES}[data-kind="bot"] [data-testid="message-text"]')
    await expect(bot_texts).to_have_text(["hello from the page"], timeout=TIMEOUT_MS)
    return scene


def refused_by_dead_node(cluster: Topology) -> int:
    """Requests nginx first sent to a node that refused the connection, then passed to the next one."""
    log = cluster.run_dir / "logs" / "nginx-error.log"
    return sum("connect() failed (111" in line for line in log.read_text().splitlines())


async def test_page_resumes_on_the_surviving_node_after_its_node_is_killed(nginx_cluster, new_tab):
    """Killing the page's gateway makes it reconnect through nginx and show every message once, in order."""
    scene = await open_scene(nginx_cluster, new_tab)
    page, sockets = scene.page, scene.sockets

    async with aiohttp.ClientSession() as session:
        sender = Sender(await connect_avoiding(session, nginx_cluster.lb_url, scene.bob, scene.victim), scene.room)
        assert sender.socket.welcome["node"] == scene.survivor
        await sender.socket.join(scene.room)
        sending = asyncio.create_task(sender.run())
        try:
            # A few messages reach the page live through its own node first.
            await sender.wait_for_count(3, scaled(15))
            from_bob = page.locator(f'{ROOM_MESSAGES}[data-own="false"][data-kind="user"]')
            await expect(from_bob).to_have_count(3, timeout=TIMEOUT_MS)

            # Freeze the node, so that the messages sent next are certain to miss the page, then kill it.
            freeze_node(nginx_cluster, scene.victim)
            frozen_at = len(sender.sent)
            await sender.wait_for_count(frozen_at + 5, scaled(15))
            killed = time.monotonic()
            signal_node(nginx_cluster, scene.victim, signal.SIGKILL)

            new_socket, node = await scene.reconnection()
            reconnected = time.monotonic()
            assert node == scene.survivor
            away = [s.id for s in sender.sent[frozen_at:]]  # sent while the page had no working connection
            await page.wait_for_function(CAUGHT_UP, arg=[away], timeout=RECOVERY_S * 1000, polling="raf")
            caught_up = time.monotonic()

            # The other user carries on; the page keeps receiving live on its new node.
            await sender.wait_for_count(len(sender.sent) + 3, scaled(15))
            sender.stop.set()
            await asyncio.wait_for(sending, scaled(20))
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            await sender.socket.close()

    # The frozen node forwarded none of them; the rejoin asked by position and got them all.
    assert not set(away) & {str(f.get("id")) for f in sockets.of_socket(scene.first_socket)}
    joined = next(f for f in sockets.of_socket(new_socket) if f["type"] == "joined")
    assert joined["recovered"] is True, joined
    assert set(away) <= {str(f["id"]) for f in sockets.of_socket(new_socket) if f["type"] == "message"}

    history = await scene.history()
    user_messages = [m for m in history if m["from"]["kind"] == "user"]
    assert [m["text"] for m in user_messages] == ["hello from the page", *(s.text for s in sender.sent)]
    assert len(history) == 2 * len(user_messages), "every user message has one bot answer"
    await scene.expect_exactly(history)
    await expect(page.get_by_test_id("conn-state")).to_have_attribute("data-state", "open")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "failover.png"), animations="disabled")
    print(
        f"\nfailover: killed {scene.victim}; the page got welcome from {scene.survivor} after "
        f"{reconnected - killed:.3f} s and was live with all {len(away)} messages it had missed after "
        f"{caught_up - killed:.3f} s; {len(history)} messages in the room, each shown once, in order; "
        f"nginx retried {refused_by_dead_node(nginx_cluster)} request(s) refused by the dead node"
    )


async def test_page_resends_once_what_it_wrote_into_a_dying_node(nginx_cluster, new_tab):
    """A message the page sent into its frozen node, never acked, is stored once after the failover."""
    scene = await open_scene(nginx_cluster, new_tab)
    page = scene.page
    text = "written while the node hangs"

    def sends() -> list[int]:
        """The sockets the page wrote ``text`` to, in order."""
        return [n for n, f in scene.sockets.sent if f["type"] == "message" and f.get("text") == text]

    freeze_node(nginx_cluster, scene.victim)
    await scene.send_on_page(text)
    await scene.sockets.wait_for(sends, 5, "the message to go out on the frozen connection")
    pending = page.locator(f'{ROOM_MESSAGES}[data-own="true"][data-pending="true"]')
    await expect(pending.get_by_test_id("message-text")).to_have_text(text)
    killed = time.monotonic()
    signal_node(nginx_cluster, scene.victim, signal.SIGKILL)

    new_socket, _ = await scene.reconnection()
    bot_texts = page.locator(f'{ROOM_MESSAGES}[data-kind="bot"] [data-testid="message-text"]')
    await expect(bot_texts).to_have_text(["hello from the page", text], timeout=RECOVERY_S * 1000)
    answered = time.monotonic()
    await expect(pending).to_have_count(0)

    history = await scene.history()
    assert [m["text"] for m in history] == ["hello from the page"] * 2 + [text] * 2
    await scene.expect_exactly(history)
    assert sends() == [scene.first_socket, new_socket], "written once into the dead node, resent once"
    print(
        f"\nresend: the bot answered the message written into the dying node {answered - killed:.3f} s after the kill"
    )
