"""Chaos under load: gateway nodes, Redis and workers are killed while clients keep chatting.

Three gateway nodes, two workers and one Redis serve four rooms with running echo bots; eight
resilient clients (each in two rooms) send a bounded number of messages throughout. The phases:
kill -9 a gateway node and start a replacement; kill -9 Redis and restart it on the same port;
kill -9 each worker in turn and start replacements. Redis runs with ``--appendonly yes
--appendfsync always`` here (the other tests run it without persistence), so every write it
acknowledged survives its restart; without that, a restart would rightly lose history.

At the end, each room's history (read over the HTTP API) is the truth: every member got exactly
the messages stored after it joined, once each and in order; every acknowledged message is among
them; every user message has exactly one echo reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.chaos.conftest import (
    GENEROUS_LIMITS,
    bot_status,
    create_room,
    delivered_after_baseline,
    eventually,
    history,
    post_message,
)
from tests.chaos.resilient import ResilientClient, id_key
from tests.conftest import make_token
from tests.procs import GatewayNode, Proc, RedisServer, WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOMS = 4
USERS = 8  # user j is in rooms j % ROOMS and (j + 1) % ROOMS
RATE = 12.0  # messages per second per client
MAX_PER_CLIENT = 400  # bound on each client's sends, whatever the phases take
ECHO_DELAY = 0.01
AOF = ["--appendonly", "yes", "--appendfsync", "always"]
GATEWAY_ENV = {**GENEROUS_LIMITS, "CHAT_HISTORY_MAX": "20000", "CHAT_DRAIN_SECONDS": "1"}
WORKER_ENV = {
    "CHAT_LOG_FORMAT": "text",
    "CHAT_LEASE_SECONDS": "2",
    "CHAT_VISIBILITY_TIMEOUT": "2",
    "CHAT_MAX_ATTEMPTS": "10",
    "CHAT_DRAIN_SECONDS": "1",
}


@dataclass
class Deployment:
    """The processes under test; replacements are appended, dead ones stay listed for their logs."""

    redis: RedisServer
    gateways: list[GatewayNode] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)  # live gateway URLs, shared with the clients
    retired: list[Proc] = field(default_factory=list)

    async def add_gateway(self, name: str) -> GatewayNode:
        node = await asyncio.to_thread(GatewayNode, self.redis.url, name, **GATEWAY_ENV)
        self.gateways.append(node)
        self.urls.append(node.url)
        return node

    async def add_worker(self, name: str) -> WorkerProcess:
        worker = await asyncio.to_thread(WorkerProcess, self.redis.url, name, **WORKER_ENV)
        self.workers.append(worker)
        return worker

    async def retire_gateway(self, node: GatewayNode, *, graceful: bool) -> None:
        """kill -9 the node, or SIGTERM it and wait for its drain; the load balancer stops using it first."""
        self.urls.remove(node.url)
        if graceful:
            await asyncio.to_thread(node.terminate)
        else:
            node.kill()
        self.gateways.remove(node)
        self.retired.append(node)

    def busiest_gateway(self, clients: list[ResilientClient]) -> tuple[GatewayNode, int]:
        """The node serving the most clients now, and how many."""
        counts = {n.node_id: sum(c.nodes[-1] == n.node_id for c in clients) for n in self.gateways}
        node = max(self.gateways, key=lambda n: counts[n.node_id])
        return node, counts[node.node_id]

    def kill_worker(self, worker: WorkerProcess) -> None:
        worker.kill()
        self.workers.remove(worker)
        self.retired.append(worker)

    def logs(self) -> str:
        procs = [self.redis, *self.gateways, *self.workers, *self.retired]
        return "\n".join(f"--- {p.name} ---\n{p.log()[-4000:]}" for p in procs)

    def stop(self) -> None:
        for proc in [*self.gateways, *self.workers, *self.retired, self.redis]:
            proc.terminate()


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    redis_server = RedisServer(extra=AOF)
    deploy = Deployment(redis_server)
    try:
        for n in range(3):
            await deploy.add_gateway(f"gw{n}")
        for n in range(2):
            await deploy.add_worker(f"wk{n}")
        yield deploy
    finally:
        deploy.stop()


class Load:
    """Every client sends to its rooms in turn at RATE per second until told to stop (or MAX_PER_CLIENT)."""

    def __init__(self, clients: list[ResilientClient]) -> None:
        self.clients = clients
        self.stop = asyncio.Event()
        self.tasks = [asyncio.create_task(self._send(c)) for c in clients]

    async def _send(self, client: ResilientClient) -> None:
        rooms = list(client.rooms)
        started = time.monotonic()
        for n in range(MAX_PER_CLIENT):
            if self.stop.is_set():
                return
            room = rooms[n % len(rooms)]
            await client.send(room, f"{client.name} says {n}")
            pause = started + (n + 1) / RATE - time.monotonic()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), pause)  # pacing, ended early by stop

    async def progressed(self, by: int, timeout: float, what: str) -> None:
        """Wait until every client got ``by`` more acks than now (the system serves everyone again)."""
        targets = [len(c.acked) + by for c in self.clients]

        async def check() -> bool:
            failed = [t for t in self.tasks if t.done() and t.exception() is not None]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            return all(len(c.acked) >= t for c, t in zip(self.clients, targets, strict=True))

        await eventually(check, timeout, what)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


def bot_replies(clients: list[ResilientClient], room: str) -> int:
    """Bot replies in ``room`` as seen by the member that saw the most."""
    return max(sum(1 for m in c.rooms[room].messages if m["from"]["kind"] == "bot") for c in clients if room in c.rooms)


@dataclass
class Scenario:
    """The phases of the test, run one after the other while the load goes on."""

    deploy: Deployment
    clients: list[ResilientClient]
    rooms: list[str]
    load: Load
    phases: list[str] = field(default_factory=list)  # what happened, for the closing summary

    async def kill_gateway(self) -> None:
        """A gateway node dies under load (kill -9); a replacement joins."""
        victim, on_it = self.deploy.busiest_gateway(self.clients)
        await self.deploy.retire_gateway(victim, graceful=False)
        await self.deploy.add_gateway("gw-new")
        await self.load.progressed(5, 30, "traffic after a gateway kill")
        self.phases.append(f"gateway {victim.node_id} killed with {on_it} clients on it")

    async def drain_gateway(self) -> None:
        """A gateway node restarts gracefully: reconnect frames, 1012 closes, clients resume elsewhere."""
        leaving, on_it = self.deploy.busiest_gateway(self.clients)
        await self.deploy.retire_gateway(leaving, graceful=True)
        await self.deploy.add_gateway("gw-next")
        await self.load.progressed(5, 30, "traffic after a graceful gateway restart")
        self.phases.append(f"gateway {leaving.node_id} drained {on_it} clients (exit {leaving.popen.returncode})")

    async def restart_redis(self) -> None:
        """Redis dies (kill -9) and comes back on the same port with its append-only file."""
        deploy, clients = self.deploy, self.clients
        before = [c.unavailable for c in clients]
        deploy.redis.kill()
        down_at = time.monotonic()

        async def refused() -> bool:
            return all(c.unavailable >= n + 3 for c, n in zip(clients, before, strict=True))

        with contextlib.suppress(TimeoutError):  # down until every client had sends refused, at most 3 s
            await eventually(refused, 3, "refused sends on every client", interval=0.05)
        old = deploy.redis
        deploy.retired.append(old)
        deploy.redis = await asyncio.to_thread(RedisServer, port=old.port, workdir=old.workdir, extra=AOF)
        down_for = time.monotonic() - down_at
        await self.load.progressed(5, 40, "traffic after the Redis restart")
        self.phases.append(f"redis down {down_for:.1f}s")

    async def kill_workers(self, times: int) -> None:
        """Workers die one after the other while requests are in flight; replacements start."""
        for n in range(times):
            count = {room: bot_replies(self.clients, room) for room in self.rooms}
            worker = self.deploy.workers[0]
            self.deploy.kill_worker(worker)
            await self.deploy.add_worker(f"wk-new{n}")

            async def answered(count: dict[str, int] = count) -> bool:
                return all(bot_replies(self.clients, room) > count[room] for room in self.rooms)

            await eventually(answered, 30, f"echo replies after worker kill {n}")
            self.phases.append(f"worker {worker.node_id} killed")

    async def converge(self, http: aiohttp.ClientSession) -> dict[str, list[dict]]:
        """Wait until every user message is answered in history and every member has all of it; returns history."""
        truth: dict[str, list[dict]] = {}

        async def all_answered() -> bool:
            for k, room in enumerate(self.rooms):
                truth[room] = await history(http, self.deploy.urls[0], f"owner{k}", room)
            return all(unanswered(truth[room]) == [] for room in self.rooms)

        await eventually(all_answered, 60, "echo replies to every user message", interval=0.5)
        for client in self.clients:
            for room in client.rooms:
                await client.wait_delivered(room, [m["id"] for m in truth[room]][-1:], timeout=30)
        return truth


async def start_clients(http: aiohttp.ClientSession, deploy: Deployment) -> tuple[list[str], list[ResilientClient]]:
    """Rooms with running echo bots and one seed message each, and every user's client joined."""
    url = deploy.urls[0]
    users = [f"u{j}" for j in range(USERS)]
    members = {k: [u for j, u in enumerate(users) if k in (j % ROOMS, (j + 1) % ROOMS)] for k in range(ROOMS)}
    rooms = [await create_room(http, url, f"owner{k}", members[k], delay=ECHO_DELAY, start=True) for k in range(ROOMS)]
    for k, room in enumerate(rooms):
        await post_message(http, url, f"owner{k}", room, "opening message")  # every member joins a non-empty room

    async def all_running() -> bool:
        return all([await bot_status(http, url, f"owner{k}", room) == "running" for k, room in enumerate(rooms)])

    await eventually(all_running, 20, "every echo bot running")
    clients = [
        ResilientClient(
            http,
            deploy.urls,
            make_token(user),
            [rooms[j % ROOMS], rooms[(j + 1) % ROOMS]],
            name=user,
            pick="random",
            rng=random.Random(j),
        )
        for j, user in enumerate(users)
    ]
    for client in clients:
        await client.start()
    return rooms, clients


async def test_chat_survives_gateway_redis_and_worker_crashes(
    deployment: Deployment, http: aiohttp.ClientSession
) -> None:
    """No acknowledged message is lost or duplicated and each gets one echo reply through node, Redis and worker kills."""
    rooms, clients = await start_clients(http, deployment)
    started = time.monotonic()
    scenario = Scenario(deployment, clients, rooms, Load(clients))
    try:
        await scenario.load.progressed(5, 20, "warm-up traffic")
        await scenario.kill_gateway()
        await scenario.drain_gateway()
        await scenario.restart_redis()
        await scenario.kill_workers(3)
        await scenario.load.finish()
        load_seconds = time.monotonic() - started
        truth = await scenario.converge(http)
    except BaseException:
        print(deployment.logs())
        raise
    finally:
        for client in clients:
            await client.close()

    report = audit(clients, rooms, truth)
    for problem in report["problems"]:
        print(f"chaos: {problem}")
    print(
        f"\nchaos: {load_seconds:.0f}s of load; phases: {'; '.join(scenario.phases)}\n"
        f"chaos: acknowledged {report['acknowledged']}, delivered {report['delivered']}, "
        f"lost {report['lost']}, duplicated {report['duplicated']}, out of order {report['disorder']}, "
        f"stored twice after a retry {report['stored_twice']}, sends refused unavailable {report['unavailable']}, "
        f"resends after no answer {report['resends']}, reconnects {report['reconnects']}, "
        f"bot replies {report['replies']} (missing {report['missing_replies']}, extra {report['extra_replies']})"
    )
    for count in ("lost", "duplicated", "disorder", "foreign", "missing_replies", "extra_replies"):
        assert report[count] == 0, report
    assert report["unexplained_copies"] == [], report


def unanswered(messages: list[dict]) -> list[str]:
    replied = {m.get("reply_to") for m in messages if m["from"]["kind"] == "bot"}
    return [m["id"] for m in messages if m["from"]["kind"] == "user" and m["id"] not in replied]


def audit(clients: list[ResilientClient], rooms: list[str], truth: dict[str, list[dict]]) -> dict:
    """Compare what every client got with each room's history; count what went wrong."""
    names = "acknowledged delivered lost duplicated disorder foreign stored_twice unavailable resends reconnects"
    report: Counter = Counter(dict.fromkeys([*names.split(), "replies", "missing_replies", "extra_replies"], 0))
    unexplained: list[str] = []
    problems: list[str] = []
    tries = {(a.room, a.text): a.tries for c in clients for a in c.acked}
    for room in rooms:
        stored = truth[room]
        ids = [m["id"] for m in stored]
        kept = set(ids)
        user_messages = [m for m in stored if m["from"]["kind"] == "user"]
        copies = Counter(m["text"] for m in user_messages)
        for text, n in copies.items():
            if n > 1:
                report["stored_twice"] += n - 1
                if tries.get((room, text), 1) == 1:
                    unexplained.append(f"{room}: {text!r} stored {n} times but sent once")
        replies = Counter(m["reply_to"] for m in stored if m["from"]["kind"] == "bot")
        report["replies"] += sum(replies.values())
        report["missing_replies"] += sum(1 for m in user_messages if m["id"] not in replies)
        report["extra_replies"] += sum(n - 1 for n in replies.values() if n > 1)
        for client in clients:
            if room not in client.rooms:
                continue
            log = client.rooms[room]
            baseline = id_key(log.baseline) if log.baseline else (0, 0)
            expected = [i for i in ids if id_key(i) > baseline]
            got = delivered_after_baseline(client, room)
            report["delivered"] += len(got)
            missing = sorted(set(expected) - set(got), key=id_key)
            report["lost"] += len(missing)
            if missing:
                joins = [(j["last_id"], j["recovered"]) for j in log.joins]
                problems.append(f"{client.name} missed {len(missing)} of {len(expected)} in {room}: {missing[:4]}")
                problems.append(f"{client.name} joins (last_id, recovered): {joins}; nodes {client.nodes}")
            report["foreign"] += len(set(got) - kept)
            report["duplicated"] += len(log.duplicates)
            report["disorder"] += len(log.disorder)
            acked_here = [a.id for a in client.acked if a.room == room]
            report["lost"] += len(set(acked_here) - kept)  # acknowledged but missing from history
    for client in clients:
        report["acknowledged"] += len(client.acked)
        report["resends"] += client.resends
        report["unavailable"] += client.unavailable
        report["reconnects"] += client.connects - 1
    return {**report, "unexplained_copies": unexplained, "problems": problems}
