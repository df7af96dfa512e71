"""deploy/loopback.sh runs the real topology on loopback: redis-server, gateways, workers, nginx, Prometheus."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import make_token
from tests.deploy.test_manifests import GATEWAY_METRICS, WORKER_METRICS
from tests.procs import ROOT, node_env, port_open, scaled

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "deploy" / "loopback.sh"
Started = tuple[Path, dict[str, str], str]


def loopback(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=scaled(120), check=False
    )


def script_env(**extra: str) -> dict[str, str]:
    """The test secret, this interpreter for the nodes, and a short drain so stop is quick."""
    env = node_env(None, CHAT_DRAIN_SECONDS="1", CHAT_LOG_FORMAT="text")
    env["PYTHON"] = sys.executable
    env["LOOPBACK_START_TIMEOUT"] = str(scaled(60))
    env.update(extra)
    return env


def read_topology(run_dir: Path) -> dict[str, str]:
    lines = (run_dir / "topology.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def recorded_pids(run_dir: Path) -> list[int]:
    return [int(path.read_text()) for path in (run_dir / "pids").glob("*.pid")]


def alive(pid: int) -> bool:
    """True while the process runs; an exited process nobody has reaped yet counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


@pytest.fixture
def start_loopback(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Starts topologies in tmp_path and stops whatever is still running at the end."""
    started: list[tuple[Path, dict[str, str]]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Started:
        env = env or script_env()
        run_dir = tmp_path / f"run{len(started)}"
        started.append((run_dir, env))
        result = loopback("start", *args, "--dir", str(run_dir), env=env)
        assert result.returncode == 0, f"start failed:\n{result.stdout}\n{result.stderr}"
        return run_dir, read_topology(run_dir), result.stdout

    yield start
    for run_dir, env in started:
        loopback("stop", "--dir", str(run_dir), env=env)


async def exported_metrics(session: aiohttp.ClientSession, url: str) -> set[str]:
    """Names of the metric families a process's /metrics declares (counters with their _total)."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE chat_")}
    return {name for name in names if not name.endswith("_created")}  # prometheus_client's creation stamps


async def expect_status(session: aiohttp.ClientSession, url: str, status: int) -> None:
    async with session.get(url) as response:
        assert response.status == status, url


async def test_loopback_serves_websocket_through_nginx(start_loopback):
    """Two gateways and a worker start healthy and export every metric, nginx upgrades a browser WebSocket, and stop ends every process."""
    run_dir, topology, stdout = await asyncio.to_thread(start_loopback, "--gateways", "2", "--workers", "1")
    lb_url = topology["LOOPBACK_LB_URL"]
    assert stdout.strip().splitlines()[-1] == lb_url
    assert "CHAT_JWT_SECRET" not in topology
    assert topology["LOOPBACK_REDIS_PORT"] != "6379"
    gateway_urls = topology["LOOPBACK_GATEWAY_URLS"].split(",")
    assert len(gateway_urls) == 2

    timeout = aiohttp.ClientTimeout(total=scaled(10))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in [*gateway_urls, *topology["LOOPBACK_WORKER_URLS"].split(","), lb_url]:
            await expect_status(session, f"{url}/healthz", 200)
        await expect_status(session, f"{lb_url}/metrics", 404)
        # The dashboard and the alerts chart exactly what the processes export.
        assert await exported_metrics(session, gateway_urls[0]) == GATEWAY_METRICS
        assert await exported_metrics(session, topology["LOOPBACK_WORKER_URLS"]) == WORKER_METRICS
        # A browser's Origin must match the Host the gateway sees, so nginx has to pass the port on.
        headers = {"Origin": lb_url}
        token = make_token("alice")
        async with session.ws_connect(f"{lb_url}/ws", params={"token": token}, headers=headers) as ws:
            welcome = await ws.receive_json(timeout=scaled(10))
    assert welcome["type"] == "welcome"
    assert welcome["user"] == "alice"
    assert welcome["node"] in {"gateway-1", "gateway-2"}

    pids = recorded_pids(run_dir)
    assert len(pids) == 5  # redis, two gateways, a worker, nginx
    result = await asyncio.to_thread(loopback, "stop", "--dir", str(run_dir), env=script_env())
    assert result.returncode == 0, result.stderr
    assert [pid for pid in pids if alive(pid)] == []
    assert recorded_pids(run_dir) == []
    nginx_log = (run_dir / "logs" / "nginx-access.log").read_text()
    assert '"GET /ws"' in nginx_log
    assert token not in nginx_log  # the balancer's log leaves query strings, and with them tokens, out


async def test_loopback_prometheus_scrapes_every_node(start_loopback):
    """With --prometheus and no secret given, Prometheus scrapes every node and the generated secret works."""
    env = script_env()
    del env["CHAT_JWT_SECRET"]
    _, topology, _ = await asyncio.to_thread(
        start_loopback, "--gateways", "2", "--workers", "1", "--prometheus", env=env
    )
    secret = topology["CHAT_JWT_SECRET"]
    assert len(secret) >= 32

    timeout = aiohttp.ClientTimeout(total=scaled(10))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        token = make_token("bob", secret=secret)
        async with session.ws_connect(f"{topology['LOOPBACK_LB_URL']}/ws", params={"token": token}) as ws:
            assert (await ws.receive_json(timeout=scaled(10)))["type"] == "welcome"

        targets_url = f"{topology['LOOPBACK_PROMETHEUS_URL']}/api/v1/targets"
        deadline = time.monotonic() + scaled(30)
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            async with session.get(targets_url) as response:
                targets = (await response.json())["data"]["activeTargets"]
            health = {target["labels"]["node"]: target["health"] for target in targets}
            if len(health) == 3 and set(health.values()) == {"up"}:
                break
            await asyncio.sleep(0.2)
    assert health == {"gateway-1": "up", "gateway-2": "up", "worker-1": "up"}


async def test_loopback_start_failure_leaves_nothing_running(tmp_path):
    """A gateway that refuses its settings fails the start, and the Redis already started is stopped."""
    env = script_env(CHAT_MAX_FRAME_BYTES="1")
    run_dir = tmp_path / "broken"
    try:
        result = await asyncio.to_thread(
            loopback, "start", "--gateways", "1", "--workers", "0", "--dir", str(run_dir), env=env
        )
        assert result.returncode != 0
        assert "gateway-1 exited during start" in result.stderr
        assert "CHAT_MAX_FRAME_BYTES" in (run_dir / "logs" / "gateway-1.log").read_text()
        assert recorded_pids(run_dir) == []
        assert not port_open(int(read_topology(run_dir)["LOOPBACK_REDIS_PORT"]))
    finally:
        await asyncio.to_thread(loopback, "stop", "--dir", str(run_dir), env=env)
