"""Streamed replies across real processes: two gateway nodes, worker processes, a private Redis.

A joiner on the other node gets the reply's text so far, then the rest; a cancel stops a reply
before it starts, while it streams, and is refused after it ended; a resend with the same
client_id is stored once; a worker killed mid-stream leaves the reply to another, which starts
it again; a disconnect cancels nothing. One test runs in-process nodes on both brokers; the
rest start real processes (``slow``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.app import BROKER
from gateway.appkeys import METRICS
from shared.settings import Settings
from tests.nodes import Cluster
from tests.procs import GatewayNode, RedisServer, WorkerProcess, make_token, scaled
from tests.wsclient import ChatSocket
from worker import embedded
from worker.runner import reclaim_interval

PACE = 0.05  # seconds between the echo bot's words
WORDS = " ".join(f"w{i}" for i in range(40))  # 40 words: a reply of about 2 s
LEASE, VISIBILITY = 2.0, 3.0  # short, so a killed worker's request is taken over within seconds
GATEWAY_ENV = {
    "CHAT_MESSAGES_PER_SECOND": "100000",
    "CHAT_MESSAGES_BURST": "100000",
    "CHAT_HTTP_PER_SECOND": "100000",
    "CHAT_LOG_FORMAT": "text",
}
WORKER_ENV = {
    "CHAT_LEASE_SECONDS": str(LEASE),
    "CHAT_VISIBILITY_TIMEOUT": str(VISIBILITY),
    "CHAT_DELTA_INTERVAL_MS": "0",  # a delta per word, so "mid-stream" is many deltas from either end
    "CHAT_LOG_FORMAT": "text",
}
REPLY_TIMEOUT = 20  # a whole streamed reply, with room for a slow machine


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


class Rig:
    """A private Redis, gateway nodes ``a`` and ``b`` on it, the worker processes started, an HTTP client."""

    def __init__(self, redis: RedisServer, a: GatewayNode, b: GatewayNode, http: aiohttp.ClientSession) -> None:
        self.redis = redis
        self.a = a
        self.b = b
        self.http = http
        self.workers: list[WorkerProcess] = []
        self.sockets: list[ChatSocket] = []

    def worker(self, name: str = "worker") -> WorkerProcess:
        proc = WorkerProcess(self.redis.url, name, **WORKER_ENV)
        self.workers.append(proc)
        return proc

    async def connect(self, node: GatewayNode, user: str) -> ChatSocket:
        sock = await ChatSocket.connect(self.http, node.url, make_token(user))
        self.sockets.append(sock)
        return sock

    async def api(self, method: str, path: str, user: str, json: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.a.url}{path}", json=json, headers=bearer(user)) as response:
            body = await response.json() if response.content_type == "application/json" else await response.text()
            return response.status, body

    async def room(self, owner: str, members: tuple[str, ...] = (), *, pace: float = PACE, start: bool = True) -> str:
        """An echo bot streaming at ``pace``, shared with ``members``; running when ``start``."""
        status, bot = await self.api(
            "POST",
            "/api/bots",
            owner,
            {"name": "streamer", "kind": "echo"} | ({"config": {"pace": pace}} if pace else {}),
        )
        assert status == 201, bot
        for member in members:
            status, body = await self.api("PUT", f"/api/bots/{bot['id']}/members/{member}", owner)
            assert status == 204, body
        if start:
            await self.start(owner, bot["id"])
        return str(bot["id"])

    async def start(self, owner: str, bot: str) -> None:
        status, body = await self.api("POST", f"/api/bots/{bot}/start", owner)
        assert status == 202, body

        async def running() -> bool:
            status, body = await self.api("GET", f"/api/bots/{bot}", owner)
            assert status == 200, body
            return body["status"] == "running"

        await eventually(running, 20, f"bot {bot} to run")

    async def history(self, user: str, bot: str) -> list[dict[str, Any]]:
        status, body = await self.api("GET", f"/api/bots/{bot}/messages?limit=1000", user)
        assert status == 200, body
        return list(body["messages"])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-4000:]}" for p in (*self.workers, self.a, self.b))


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll an outside condition (an HTTP answer) until it holds, with a deadline."""
    deadline = time.monotonic() + scaled(timeout)
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """Its own redis-server on a free port, two gateway processes; workers are started by the test."""
    redis = RedisServer()
    nodes: list[GatewayNode] = []
    try:
        nodes = [GatewayNode(redis.url, name, **GATEWAY_ENV) for name in ("a", "b")]
        async with aiohttp.ClientSession() as http:
            rig = Rig(redis, nodes[0], nodes[1], http)
            try:
                yield rig
            finally:
                for sock in rig.sockets:
                    await sock.close()
                for proc in rig.workers:
                    proc.terminate()
            logs = rig.logs()
            print(logs)  # shown when the test failed
        codes = [node.terminate() for node in nodes]
        assert codes == [0, 0], logs
    finally:
        for node in nodes:
            node.terminate()
        redis.terminate()


async def send(sock: ChatSocket, room: str, text: str, **extra: Any) -> dict[str, Any]:
    ack = await sock.request({"type": "message", "room": room, "text": text, **extra}, "ack")
    assert ack["type"] == "ack", ack
    return ack


async def cancel(sock: ChatSocket, room: str, message: str, answer: str = "cancel_ok") -> dict[str, Any]:
    frame = await sock.request({"type": "cancel", "room": room, "message": message}, answer)
    assert frame["type"] == answer, frame
    return frame


async def deltas_arrive(sock: ChatSocket, request: str, count: int) -> None:
    """Wait until ``count`` deltas of the reply to ``request`` arrived (they stay in ``seen``)."""
    for _ in range(count):
        await sock.expect("delta", reply_to=request, timeout=10)


def of_reply(frames: list[dict[str, Any]], request: str, *kinds: str) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] in kinds and f.get("reply_to") == request]


def states(sock: ChatSocket, request: str) -> list[str]:
    return [f["state"] for f in sock.seen if f["type"] == "status" and f["message_id"] == request]


def streamed(sock: ChatSocket, request: str) -> str:
    return "".join(d["text"] for d in of_reply(sock.seen, request, "delta"))


async def answered(sock: ChatSocket, room: str, text: str) -> dict[str, Any]:
    """Send ``text`` and wait for the bot's whole answer and its ``done``: everything queued before it ran."""
    ack = await send(sock, room, text)
    reply = await sock.expect("message", reply_to=ack["id"], timeout=REPLY_TIMEOUT)
    await sock.expect("status", message_id=ack["id"], state="done", timeout=5)
    return reply


def gauge(text: str, name: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


async def bots_served(http: aiohttp.ClientSession, proc: WorkerProcess) -> float:
    async with http.get(f"http://127.0.0.1:{proc.metrics_port}/metrics") as response:
        assert response.status == 200
        return gauge(await response.text(), "chat_worker_bots")


# -- joining mid-stream -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("since", [False, True], ids=["without-since", "since-the-request"])
async def test_joiner_on_the_other_node_gets_the_text_so_far_then_the_rest(rig: Rig, since: bool) -> None:
    """A user joining on node B mid-reply gets one snapshot, then only the later deltas, then the message."""
    rig.worker()
    bot = await rig.room("alice", ("bob",))
    alice = await rig.connect(rig.a, "alice")
    await alice.join(bot)
    request = (await send(alice, bot, WORDS))["id"]
    await deltas_arrive(alice, request, 5)

    bob = await rig.connect(rig.b, "bob")
    joined = await bob.join(bot, **({"since": request} if since else {}))
    final = await bob.expect("message", reply_to=request, timeout=REPLY_TIMEOUT)
    await alice.expect("message", reply_to=request, timeout=REPLY_TIMEOUT)

    assert joined["recovered"] is since
    after_join = bob.seen[bob.seen.index(joined) + 1 :]
    assert of_reply(bob.seen[: bob.seen.index(joined)], request, "stream", "delta", "message") == []
    snapshot, *live, last = of_reply(after_join, request, "stream", "delta", "message")
    assert snapshot["type"] == "stream", snapshot  # the text so far comes first, in one frame
    assert last is final
    assert [f["type"] for f in live] == ["delta"] * len(live)  # one snapshot, then deltas only
    assert snapshot["attempt"] == 1
    assert {d["attempt"] for d in live} <= {1}
    assert snapshot["seq"] >= 5  # alice had five deltas before bob came
    assert live, "bob joined 2 s before the end and got no live delta"
    assert [d["seq"] for d in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    alice_deltas = of_reply(alice.seen, request, "delta")
    assert snapshot["text"] == "".join(d["text"] for d in alice_deltas if d["seq"] <= snapshot["seq"])
    assert live[-1]["seq"] == alice_deltas[-1]["seq"]  # nothing missing at the end either
    assert snapshot["text"] + "".join(d["text"] for d in live) == final["text"] == WORDS
    assert "state" not in final
    assert not [f for f in bob.seen if f["type"] == "message" and f["id"] == request]  # since: nothing replayed


async def test_joiner_on_another_node_gets_the_snapshot_on_both_brokers(cluster: Cluster) -> None:
    """In-process nodes on the memory broker and on Redis: a join mid-reply gets one stream frame, then the rest."""
    first, second = await cluster.node(), await cluster.node()
    app = cluster.servers[0].app
    settings = cluster.settings(node_id="worker", delta_interval_ms=0)
    async with embedded.running(settings, app[BROKER], app[METRICS].registry, 1):
        bot = (await cluster.bot(first, "alice", members=("bob",), config={"pace": PACE}))["id"]
        status, _ = await cluster.api("POST", f"{first}/api/bots/{bot}/start", "alice")
        assert status == 202
        alice = await cluster.connect(first, "alice")
        if (await alice.join(bot))["bot"]["status"] != "running":
            await alice.expect("bot_status", status="running", timeout=10)
        request = (await send(alice, bot, WORDS))["id"]
        await deltas_arrive(alice, request, 3)
        bob = await cluster.connect(second, "bob")
        await bob.join(bot)
        final = await bob.expect("message", reply_to=request, timeout=REPLY_TIMEOUT)
        await alice.expect("message", reply_to=request, timeout=REPLY_TIMEOUT)
    snapshot, *live, last = of_reply(bob.seen, request, "stream", "delta", "message")
    assert (snapshot["type"], snapshot["attempt"]) == ("stream", 1)
    assert snapshot["seq"] >= 3
    assert last is final
    assert [d["seq"] for d in live] == list(range(snapshot["seq"] + 1, snapshot["seq"] + 1 + len(live)))
    assert snapshot["text"] == "".join(d["text"] for d in of_reply(alice.seen, request, "delta")[: snapshot["seq"]])
    assert snapshot["text"] + "".join(d["text"] for d in live) == final["text"] == WORDS


# -- cancel -----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cancel_of_a_queued_request_of_a_stopped_bot_means_it_is_never_answered(rig: Rig) -> None:
    """Cancel before the bot runs: cancel_ok, status cancelled; once started, the bot answers only what came next."""
    rig.worker()
    bot = await rig.room("alice", start=False)
    alice = await rig.connect(rig.a, "alice")
    await alice.join(bot)
    ack = await send(alice, bot, "never answered")
    assert ack["queued"] is True
    ok = await cancel(alice, bot, ack["id"])
    assert (ok["room"], ok["message"]) == (bot, ack["id"])
    await alice.expect("status", message_id=ack["id"], state="cancelled", timeout=10)

    await rig.start("alice", bot)
    reply = await answered(alice, bot, "answered")
    assert reply["text"] == "answered"
    assert of_reply(alice.seen, ack["id"], "message") == []  # see the xfail test below for its deltas
    assert states(alice, ack["id"]) == ["cancelled"]  # no processing, no second word
    replies = [m["reply_to"] for m in await rig.history("alice", bot) if m["from"]["kind"] == "bot"]
    assert replies == [reply["reply_to"]]


@pytest.mark.slow
async def test_cancel_of_a_request_waiting_behind_a_busy_bot_means_it_is_never_answered(rig: Rig) -> None:
    """Cancel of a request queued behind a streaming one: it is skipped; the next one is answered."""
    rig.worker()
    bot = await rig.room("alice")
    alice = await rig.connect(rig.a, "alice")
    await alice.join(bot)
    first = (await send(alice, bot, WORDS))["id"]
    second = (await send(alice, bot, "never answered"))["id"]
    await deltas_arrive(alice, first, 2)
    await cancel(alice, bot, second)
    await alice.expect("status", message_id=second, state="cancelled", timeout=10)
    whole = await alice.expect("message", reply_to=first, timeout=REPLY_TIMEOUT)
    assert whole["text"] == WORDS  # the running one was not touched
    third = await answered(alice, bot, "answered")
    assert third["text"] == "answered"
    assert of_reply(alice.seen, second, "message") == []
    assert states(alice, second) == ["cancelled"]
    replies = [m["reply_to"] for m in await rig.history("alice", bot) if m["from"]["kind"] == "bot"]
    assert replies == [first, third["reply_to"]]


@pytest.mark.slow
async def test_a_request_cancelled_before_it_started_streams_nothing(rig: Rig) -> None:
    """A request cancelled while its bot was stopped sends no delta once the bot runs."""
    rig.worker()
    bot = await rig.room("alice", start=False)
    alice = await rig.connect(rig.a, "alice")
    await alice.join(bot)
    request = (await send(alice, bot, "never streamed"))["id"]
    await cancel(alice, bot, request)
    await alice.expect("status", message_id=request, state="cancelled", timeout=10)
    await rig.start("alice", bot)
    await answered(alice, bot, "answered")
    assert of_reply(alice.seen, request, "delta", "stream", "message") == []


@pytest.mark.slow
async def test_cancel_mid_stream_stores_the_text_so_far_as_cancelled(rig: Rig) -> None:
    """Cancel while streaming: cancel_ok, a reply marked cancelled holding exactly the deltas sent, no done."""
    rig.worker()
    bot = await rig.room("alice", ("bob",))
    alice = await rig.connect(rig.a, "alice")
    bob = await rig.connect(rig.b, "bob")
    await alice.join(bot)
    await bob.join(bot)
    request = (await send(alice, bot, WORDS))["id"]
    await deltas_arrive(alice, request, 5)
    await cancel(alice, bot, request)
    reply = await alice.expect("message", reply_to=request, timeout=10)
    await alice.expect("status", message_id=request, state="cancelled", timeout=10)
    on_b = await bob.expect("message", reply_to=request, timeout=10)
    await bob.expect("status", message_id=request, state="cancelled", timeout=10)

    assert reply["state"] == "cancelled"
    assert reply["text"] == streamed(alice, request) == streamed(bob, request)
    assert 0 < len(reply["text"]) < len(WORDS)
    assert WORDS.startswith(reply["text"])
    assert on_b == reply
    assert alice.seen.index(reply) < alice.seen.index(
        next(f for f in alice.seen if f["type"] == "status" and f["state"] == "cancelled")
    )
    await answered(alice, bot, "next")  # whatever the worker had left to say about the request is said
    assert "done" not in states(alice, request)
    assert states(alice, request).count("cancelled") == 1
    assert len(of_reply(alice.seen, request, "message")) == 1
    [stored] = [m for m in await rig.history("alice", bot) if m.get("reply_to") == request]
    assert stored == reply


@pytest.mark.slow
async def test_cancel_is_refused_after_the_end_to_others_and_for_unknown_ids(rig: Rig) -> None:
    """conflict after the end, forbidden for another member, not_found for an unknown id; HTTP gives 202 then 409."""
    rig.worker()
    bot = await rig.room("owner", ("alice", "bob"))
    alice = await rig.connect(rig.a, "alice")
    bob = await rig.connect(rig.b, "bob")
    await alice.join(bot)
    await bob.join(bot)
    request = (await send(alice, bot, WORDS))["id"]
    await deltas_arrive(alice, request, 2)

    refused = await cancel(bob, bot, request, "error")
    assert refused["code"] == "forbidden"
    unknown = await cancel(alice, bot, "1-0", "error")
    assert unknown["code"] == "not_found"
    path = f"/api/bots/{bot}/messages/{request}/cancel"
    status, body = await rig.api("POST", path, "bob")
    assert (status, body["error"]) == (403, "forbidden")
    status, body = await rig.api("POST", f"/api/bots/{bot}/messages/1-0/cancel", "owner")
    assert (status, body["error"]) == (404, "not_found")

    status, body = await rig.api("POST", path, "owner")  # the owner may stop anyone's reply
    assert (status, body) == (202, {"room": bot, "message": request})
    reply = await alice.expect("message", reply_to=request, timeout=10)
    assert reply["state"] == "cancelled"
    assert 0 < len(reply["text"]) < len(WORDS)  # bob's refused cancels stopped nothing; the owner's did
    await alice.expect("status", message_id=request, state="cancelled", timeout=10)
    status, body = await rig.api("POST", path, "owner")
    assert (status, body["error"]) == (409, "conflict")
    assert (await cancel(alice, bot, request, "error"))["code"] == "conflict"

    done = await answered(alice, bot, "short")
    ended = await cancel(alice, bot, done["reply_to"], "error")
    assert ended["code"] == "conflict"
    assert states(alice, done["reply_to"])[-1] == "done"
    await bob.expect("status", message_id=done["reply_to"], state="done", timeout=10)
    assert states(bob, request).count("cancelled") == 1
    assert len(of_reply(bob.seen, request, "message")) == 1


# -- idempotent sends -------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_resend_with_the_same_client_id_is_stored_and_answered_once(rig: Rig) -> None:
    """Sent on node A, resent after a reconnect on node B with the same client_id: one ack id, one message, one reply."""
    rig.worker()
    bot = await rig.room("alice", pace=0)
    first = await rig.connect(rig.a, "alice")
    await first.join(bot)
    ack = await send(first, bot, "only once", client_id="draft-1")
    await first.close()

    again = await rig.connect(rig.b, "alice")
    await again.join(bot)
    resent = await send(again, bot, "only once", client_id="draft-1")
    assert (resent["id"], resent["ts"]) == (ack["id"], ack["ts"])
    later = await answered(again, bot, "after the resend")  # a second request would have been answered first

    assert not [f for f in again.seen if f["type"] == "message" and f.get("client_id") == "draft-1"]
    assert of_reply(again.seen, ack["id"], "message") == []  # answered before the reconnect, not again
    history = await rig.history("alice", bot)
    users = [m for m in history if m["from"]["kind"] == "user"]
    assert [(m["id"], m.get("client_id")) for m in users] == [(ack["id"], "draft-1"), (later["reply_to"], None)]
    replies = [(m["reply_to"], m["text"]) for m in history if m["from"]["kind"] == "bot"]
    assert replies == [(ack["id"], "only once"), (later["reply_to"], "after the resend")]


# -- a worker killed mid-stream ---------------------------------------------------------------


@pytest.mark.slow
async def test_kill_9_of_the_worker_mid_stream_restarts_the_reply_and_ends_with_one_message(rig: Rig) -> None:
    """After kill -9 the other worker starts the reply again (attempt 2, seq 0, no text) and the room gets one message."""
    workers = [rig.worker("a"), rig.worker("b")]
    bot = await rig.room("alice", ("bob",))
    alice = await rig.connect(rig.a, "alice")
    bob = await rig.connect(rig.b, "bob")
    await alice.join(bot)
    await bob.join(bot)
    request = (await send(alice, bot, WORDS))["id"]
    await deltas_arrive(alice, request, 5)
    served = [await bots_served(rig.http, proc) for proc in workers]
    assert sorted(served) == [0, 1], served
    holder, other = workers if served[0] else workers[::-1]
    holder.kill()
    killed = time.monotonic()

    bound = (
        LEASE + VISIBILITY + reclaim_interval(Settings(visibility_timeout=VISIBILITY)) + len(WORDS.split()) * PACE + 5
    )
    restart = await alice.expect("stream", reply_to=request, timeout=bound)
    final = await alice.expect("message", reply_to=request, timeout=bound)
    assert await bob.expect("message", reply_to=request, timeout=10) == final
    print(f"\nkill -9 to the final message: {time.monotonic() - killed:.2f} s")
    assert (restart["attempt"], restart["seq"], restart["text"]) == (2, 0, "")
    assert final["text"] == WORDS
    assert "state" not in final
    for sock in (alice, bob):
        frames = of_reply(sock.seen, request, "stream", "delta", "message")
        cut = frames.index(restart)
        first_try, second_try = frames[:cut], frames[cut + 1 :]
        assert first_try, "no delta of the first attempt"
        assert {(f["type"], f["attempt"]) for f in first_try} == {("delta", 1)}
        assert second_try[-1] == final
        again = second_try[:-1]
        assert {(f["type"], f["attempt"]) for f in again} == {("delta", 2)}
        assert [d["seq"] for d in again] == list(range(1, len(again) + 1))
        assert "".join(d["text"] for d in again) == WORDS
    await answered(alice, bot, "after the crash")
    for sock in (alice, bob):
        assert len(of_reply(sock.seen, request, "message")) == 1
    assert len([m for m in await rig.history("alice", bot) if m.get("reply_to") == request]) == 1
    assert other.alive()


# -- a disconnect -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_the_sender_disconnecting_mid_stream_cancels_nothing(rig: Rig) -> None:
    """Alice closes her socket mid-reply; bob on the other node sees the reply grow to the end; history has it whole."""
    rig.worker()
    bot = await rig.room("alice", ("bob",))
    alice = await rig.connect(rig.a, "alice")
    bob = await rig.connect(rig.b, "bob")
    await alice.join(bot)
    await bob.join(bot)
    request = (await send(alice, bot, WORDS))["id"]
    await deltas_arrive(alice, request, 3)
    await alice.close()
    seen_by_alice = of_reply(alice.seen, request, "delta")[-1]["seq"]

    final = await bob.expect("message", reply_to=request, timeout=REPLY_TIMEOUT)
    await bob.expect("status", message_id=request, state="done", timeout=5)
    assert final["text"] == WORDS
    assert "state" not in final
    assert streamed(bob, request) == WORDS
    assert of_reply(bob.seen, request, "delta")[-1]["seq"] > seen_by_alice + 10  # it went on well after she left
    assert "cancelled" not in states(bob, request)
    [stored] = [m for m in await rig.history("alice", bot) if m.get("reply_to") == request]
    assert stored == final
