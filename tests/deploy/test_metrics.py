"""The /metrics of a gateway and a worker under a little load pass promtool and keep labels bounded."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.deploy.test_manifests import GATEWAY_METRICS, WORKER_METRICS, tool
from tests.procs import GatewayNode, RedisServer, WorkerProcess, make_token, scaled
from tests.wsclient import ChatSocket

pytestmark = pytest.mark.slow
# label names any series may carry: none of them can hold a user id, room id or token
ALLOWED_LABELS = {
    "reason",
    "type",
    "kind",
    "outcome",
    "le",
    "quantile",
    "version",
    "implementation",
    "major",
    "minor",
    "patchlevel",
    "generation",
}


@pytest.fixture
async def scraped(redis_server: RedisServer) -> AsyncIterator[tuple[str, str]]:
    """The text of a gateway's and a worker's /metrics after a short chat with an echo bot."""
    gateway = GatewayNode(redis_server.url, "metrics")
    worker = WorkerProcess(redis_server.url, "metrics-worker")
    try:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {make_token('owner')}"}
            async with session.post(
                f"{gateway.url}/api/bots", json={"name": "m", "kind": "echo"}, headers=headers
            ) as r:
                bot = (await r.json())["id"]
            async with session.post(f"{gateway.url}/api/bots/{bot}/start", headers=headers) as r:
                assert r.status == 202
            sock = await ChatSocket.connect(session, gateway.url, make_token("owner"))
            joined = await sock.join(bot)
            if joined["bot"]["status"] != "running":  # a worker may have taken it before the join
                await sock.expect("bot_status", status="running", timeout=20)
            for i in range(20):
                ack = await sock.request({"type": "message", "room": bot, "text": f"n{i}"}, "ack")
                await sock.expect("message", reply_to=ack["id"], timeout=20)
            await sock.ws.send_str("not json")
            async with session.get(f"{gateway.url}/metrics") as r:
                gateway_text = await r.text()
            async with session.get(f"http://127.0.0.1:{worker.metrics_port}/metrics") as r:
                worker_text = await r.text()
            await sock.close()
        yield gateway_text, worker_text
    finally:
        worker.terminate()
        gateway.terminate()


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, timeout=scaled(60)
    )


def label_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        inside = line[line.index("{") + 1 : line.rindex("}")]
        names |= {pair.split("=", 1)[0] for pair in inside.split('",') if "=" in pair}
    return names


async def test_metrics_pass_promtool_and_carry_bounded_labels(scraped: tuple[str, str]) -> None:
    """promtool check metrics accepts both endpoints; every expected metric is there; no label holds an id."""
    gateway_text, worker_text = scraped
    for text, expected in ((gateway_text, GATEWAY_METRICS), (worker_text, WORKER_METRICS)):
        result = promtool_check(text)
        assert result.returncode == 0, result.stdout + result.stderr
        present = {line.split(" ")[2] for line in text.splitlines() if line.startswith("# TYPE")}
        exported = {name + "_total" if name + "_total" in text else name for name in present}
        assert expected <= exported | present, expected - exported - present
        assert label_names(text) <= ALLOWED_LABELS, label_names(text) - ALLOWED_LABELS
    assert 'chat_frames_received_total{type="message"} 20.0' in gateway_text
    assert 'chat_worker_requests_total{kind="echo",outcome="done"} 20.0' in worker_text
    assert "chat_deliveries_total" in gateway_text
