"""The systems under test: how to start each one's nodes on loopback, reach them, and make rooms.

Every system gets the same topology: a redis-server of its own and two server nodes, each a
separate process on a free port. Ours also gets bot workers when a scenario needs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import ours
from bench.procs import Proc, RedisServer, free_port

NODE_DIR = Path(__file__).resolve().parent / "peers" / "node_socketio"


@dataclass
class Topology:
    """The running processes of one system."""

    redis: RedisServer
    nodes: list[Proc]
    ports: list[int]
    workers: list[Proc] = field(default_factory=list)

    def processes(self) -> list[Proc]:
        return [*self.workers, *self.nodes, self.redis]


class System:
    """A chat server that speaks ``wire`` (see bench.wire); subclasses say how to run it."""

    name = ""
    wire = "bare"
    has_bots = False

    def unavailable(self) -> str | None:
        """Why this system cannot run on this machine, or None if it can."""
        return None

    def node_args(self, port: int, redis_url: str, number: int) -> list[str]:
        raise NotImplementedError

    def node_env(self, redis_url: str) -> dict[str, str] | None:
        return None

    def node_cwd(self) -> Path:
        return Path(__file__).resolve().parent.parent

    def worker(self, redis_url: str, number: int, env: Mapping[str, str] | None = None) -> Proc:
        """Start bot worker ``number``, with ``env`` added to its environment."""
        raise NotImplementedError(f"{self.name} has no bot workers")

    def url(self, port: int, user: str) -> str:
        return f"ws://127.0.0.1:{port}/ws?user={user}"

    async def make_rooms(self, port: int, rooms: list[list[str]]) -> list[str]:
        """Make rooms with the given users allowed in; return their ids."""
        return [f"room-{i}" for i in range(len(rooms))]

    async def resume_points(self, port: int, rooms: list[str]) -> list[str | None]:
        """Per room, the message id a reconnecting client of it resumes after; None where a join has no position."""
        return [None] * len(rooms)

    @contextmanager
    def running(
        self, nodes: int = 2, workers: int = 0, worker_env: Mapping[str, str] | None = None
    ) -> Iterator[Topology]:
        """Start Redis, ``nodes`` server nodes and ``workers`` workers (``worker_env`` added to theirs); stop them all on exit."""
        redis = RedisServer()
        topology = Topology(redis, [], [])
        try:
            for number in range(nodes):
                port = free_port()
                args = self.node_args(port, redis.url, number)
                proc = Proc(args, name=f"{self.name}-{number}", env=self.node_env(redis.url), cwd=self.node_cwd())
                topology.nodes.append(proc)
                topology.ports.append(port)
                proc.wait_port(port)
            topology.workers.extend(self.worker(redis.url, number, worker_env) for number in range(workers))
            yield topology
        finally:
            for proc in reversed(topology.processes()):
                proc.stop()


class Ours(System):
    name = "ours"
    wire = "ours"
    has_bots = True

    def unavailable(self) -> str | None:
        probe = subprocess.run(
            [sys.executable, "-m", "gateway", "--help"], capture_output=True, cwd=self.node_cwd(), timeout=60
        )
        return None if probe.returncode == 0 else "python -m gateway --help failed: the gateway is not runnable"

    def node_env(self, redis_url: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        # Limits meant for abusive clients would throttle the load generator's senders and the room setup.
        env.update(
            CHAT_REDIS_URL=redis_url,
            CHAT_JWT_SECRET=ours.SECRET,
            CHAT_MESSAGES_PER_SECOND="1000000",
            CHAT_MESSAGES_BURST="1000000",
            CHAT_HTTP_PER_SECOND="1000000",
            CHAT_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        return env

    def node_args(self, port: int, redis_url: str, number: int) -> list[str]:
        return [sys.executable, "-m", "gateway", "--port", str(port), "--node-id", f"gw{number + 1}"]

    def worker(self, redis_url: str, number: int, env: Mapping[str, str] | None = None) -> Proc:
        port = free_port()
        args = [sys.executable, "-m", "worker", "--node-id", f"worker{number + 1}", "--metrics-port", str(port)]
        proc = Proc(
            args, name=f"ours-worker-{number}", env={**self.node_env(redis_url), **(env or {})}, cwd=self.node_cwd()
        )
        proc.wait_port(port)
        return proc

    def url(self, port: int, user: str) -> str:
        return f"ws://127.0.0.1:{port}/ws?token={ours.token(user)}"

    async def make_rooms(self, port: int, rooms: list[list[str]]) -> list[str]:
        return await ours.make_rooms(f"http://127.0.0.1:{port}", rooms)

    async def resume_points(self, port: int, rooms: list[str]) -> list[str | None]:
        # One message in each room beforehand: the client held it and joins with ``since`` set to its id.
        ids: list[str | None] = [*await ours.post_messages(f"http://127.0.0.1:{port}", rooms)]
        return ids

    async def make_bot_rooms(self, port: int, users: list[str], config: dict[str, Any] | None = None) -> list[str]:
        return await ours.make_bot_rooms(f"http://127.0.0.1:{port}", users, config)


class Bare(System):
    name = "bare"

    def node_args(self, port: int, redis_url: str, number: int) -> list[str]:
        return [sys.executable, "-m", "bench.peers.bare_server", "--port", str(port), "--redis-url", redis_url]


class PythonSocketIO(System):
    name = "socketio"
    wire = "socketio"

    def node_args(self, port: int, redis_url: str, number: int) -> list[str]:
        return [sys.executable, "-m", "bench.peers.socketio_server", "--port", str(port), "--redis-url", redis_url]

    def url(self, port: int, user: str) -> str:
        return f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}"


class NodeSocketIO(PythonSocketIO):
    name = "node"

    def unavailable(self) -> str | None:
        if shutil.which("node") is None or shutil.which("npm") is None:
            return "node or npm is not on PATH"
        if (NODE_DIR / "node_modules").is_dir():
            return None
        install = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600
        )
        if install.returncode != 0:
            return f"npm install failed: {install.stderr.strip().splitlines()[-1:]}"
        return None

    def node_args(self, port: int, redis_url: str, number: int) -> list[str]:
        return ["node", "server.js", "--port", str(port), "--redis-url", redis_url]

    def node_cwd(self) -> Path:
        return NODE_DIR


SYSTEMS: dict[str, System] = {s.name: s for s in (Ours(), Bare(), PythonSocketIO(), NodeSocketIO())}
