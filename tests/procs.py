"""Real processes for tests: redis-server, gateway nodes and workers on free loopback ports.

Each is started as a child process and stopped by its PID. Readiness is awaited by polling
the process's own port or health endpoint with a deadline, never by a fixed sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_FACTOR = float(os.environ.get("CHAT_TESTS_TIMEOUT_FACTOR", "1"))
TEST_SECRET = "test-secret-that-is-long-enough-0123456789"


def scaled(seconds: float) -> float:
    """A timeout scaled for slow machines (CHAT_TESTS_TIMEOUT_FACTOR)."""
    return seconds * TIMEOUT_FACTOR


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


def make_token(sub: str = "alice", *, secret: str = TEST_SECRET, ttl: float = 3600, **claims) -> str:
    """An HS256 token for ``sub`` valid for ``ttl`` seconds."""
    payload = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


class Proc:
    """A child process that is stopped by PID (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, args: list[str], *, env: Mapping[str, str] | None = None, name: str, cwd: Path = ROOT):
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            args, env=dict(env) if env is not None else None, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def failed(self, what: str) -> RuntimeError:
        """The error to raise when the process did not start: its log, with the file closed."""
        text = self.log()
        self._log.close()
        return RuntimeError(f"{what} failed to start:\n{text}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: the process gets no chance to clean up."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(scaled(10))

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM and wait for the exit status; SIGKILL after ``timeout`` seconds."""
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.popen.returncode


class RedisServer(Proc):
    """A private redis-server on a free loopback port, with no persistence."""

    def __init__(self, port: int | None = None, extra: list[str] | None = None, workdir: Path | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (apt-get install -y redis-server)")
        self.port = port or free_port()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-"))
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir), *(extra or [])]
        super().__init__(args, name=f"redis-{self.port}")
        wait_until(lambda: port_open(self.port) or not self.alive(), 10, f"redis on {self.port}")
        if not self.alive():
            raise self.failed("redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def node_env(redis_url: str | None, **extra: str) -> dict[str, str]:
    """Environment for a gateway or worker process under test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update({"CHAT_JWT_SECRET": TEST_SECRET, "CHAT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    if redis_url:
        env["CHAT_REDIS_URL"] = redis_url
    env.update(extra)
    return env


class GatewayNode(Proc):
    """``python -m gateway`` on a free port; ready when /healthz answers."""

    def __init__(self, redis_url: str | None, name: str = "gw", **env: str):
        self.port = free_port()
        self.node_id = f"{name}-{self.port}"
        args = [sys.executable, "-m", "gateway", "--port", str(self.port), "--node-id", self.node_id]
        super().__init__(args, env=node_env(redis_url, **env), name=self.node_id)
        wait_until(lambda: port_open(self.port) or not self.alive(), 20, f"gateway {self.node_id}")
        if not self.alive():
            raise self.failed("gateway")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class WorkerProcess(Proc):
    """``python -m worker`` against a Redis URL."""

    def __init__(self, redis_url: str, name: str = "worker", **env: str):
        self.metrics_port = free_port()
        self.node_id = f"{name}-{self.metrics_port}"
        args = [sys.executable, "-m", "worker", "--node-id", self.node_id, "--metrics-port", str(self.metrics_port)]
        super().__init__(args, env=node_env(redis_url, **env), name=self.node_id)
        wait_until(lambda: port_open(self.metrics_port) or not self.alive(), 20, f"worker {self.node_id}")
        if not self.alive():
            raise self.failed("worker")


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
