"""The bench's storm and scale figures: how parts near their limits are named, how failures are counted, how the report shows them."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.drive import limit_label, saturation
from bench.loadgen import Generator, Member


def _figures(**overrides: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "node_cpu_pct": [40.0, 55.0],
        "loadgen_cpu_pct_max": 30.0,
        "loadgen_cpu_pct_of_cores": 25.0,
        "redis_cpu_pct": 10.0,
        "machine_cpu_pct": 60.0,
    }
    return {**figures, **overrides}


def test_saturation_names_the_part_nearest_its_limit() -> None:
    """The busiest node, the busier load-generator measure and Redis are compared; the largest share wins."""
    assert saturation(_figures())["closest"] == "server"
    assert saturation(_figures(loadgen_cpu_pct_of_cores=80.0))["closest"] == "loadgen"
    limits = saturation(_figures(redis_cpu_pct=97.0, machine_cpu_pct=95.0))
    assert limits["closest"] == "redis"
    assert limits["machine_full"]
    assert limit_label(limits) == "redis 97 %, all cores busy"
    assert limit_label(None) == "-"


def _storm(errors: int, cost: float, p99: float) -> dict[str, Any]:
    summary = {
        "connections": 10,
        "joined": 10 - errors,
        "errors": errors,
        "dropped": 0,
        "connections_per_s": 500.0,
        "server_cpu_us_per_conn": cost,
        "redis_cpu_us_per_conn": 50.0,
        "join_p50_ms": p99 / 2,
        "join_p99_ms": p99,
        "join_max_ms": p99,
        "rss_per_conn_kb": 20.0,
        "listen_overflows": 0,
        "loadgen_cpu_pct_max": 30.0,
        "other_cpu_pct": 5.0,
        "nearest_limit": "server 90 %",
    }
    result: dict[str, Any] = {"summary": summary}
    if errors:
        result["error"] = f"{errors} of 10 connections failed to join"
    return result


def _scale_run(nodes: int) -> dict[str, Any]:
    limits = {"rate": 100.0, "passed": True, **saturation(_figures(machine_cpu_pct=95.0))}
    return {"nodes": nodes, "cost_steps": [], "steps": [], "limits": limits, "limits_at_failure": None}


def _data() -> dict[str, Any]:
    scale_summary: dict[str, Any] = {"capacity_ratio": 1.0, "cpu_ratio": 1.1, "lost": 0, "duplicated": 0}
    for n in (2, 3):
        scale_summary |= {
            f"max_ok_rate_{n}": 100.0,
            f"top_rate_passed_{n}": True,
            f"server_cpu_us_per_delivery_{n}": 300.0,
            f"redis_cpu_us_per_delivery_{n}": 50.0,
            f"node_cpu_pct_{n}": [10.0] * n,
            f"p99_ms_{n}": 5.0,
            f"limits_{n}": _scale_run(n)["limits"],
        }
    return {
        "meta": {"quick": True, "started": "now", "cpus": 2, "python": "3.11", "load_before": 0.5},
        "systems": {"ours": "ok", "bare": "ok"},
        "results": {
            "storm": {"ours": _storm(2, 800.0, 600.0), "bare": _storm(0, 400.0, 300.0)},
            "scale": {
                "ours": {"summary": scale_summary, "runs": [_scale_run(2), _scale_run(3)]},
            },
        },
    }


def test_report_shows_the_storm_its_failures_ratios_and_the_scale_limits(tmp_path: Path) -> None:
    """results.md has the storm table, a failed storm named above it, ours/peer storm ratios and scale's limits."""
    pytest.importorskip("matplotlib")
    data = _data()
    paths = report.write(data, tmp_path)
    assert data["ratios"]["storm"]["bare"]["server_cpu_us_per_conn"] == 2.0
    assert data["ratios"]["storm"]["bare"]["join_p99_ms"] == 2.0
    markdown = paths[1].read_text()
    storm = markdown.split("## storm", 1)[1].split("## scale", 1)[0]
    assert "| system | connections | errors | dropped | connections/s | server µs/conn |" in storm
    assert "deliveries/s" not in storm  # the storm sends no messages
    assert "- **`ours` failed**: 2 of 10 connections failed to join" in storm
    assert "| `bare` | 10 | 0 | 0 | 500 | 400 |" in storm
    scale = markdown.split("## scale", 1)[1].split("## ours / peer", 1)[0]
    assert "nearest its limit 2 / 3 nodes" in scale
    assert "server 55 %, all cores busy / server 55 %, all cores busy" in scale
    assert "| `ours` | 2 | top passing: 100 | 55.00 | 30.00 | 10.00 | 95.00 | server 55 %, all cores busy |" in scale
    assert "| storm | `bare` |" in markdown
    assert paths[2].read_bytes().startswith(b"\x89PNG")


async def test_failed_connections_are_counted_and_bounded_by_the_deadline() -> None:
    """A refused connection and one whose upgrade never comes fail by the deadline without failing the call."""
    refused, silent = socket.socket(), socket.socket()
    with refused, silent:
        refused.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the TCP handshake; nobody ever answers the upgrade
        urls = [f"ws://127.0.0.1:{sock.getsockname()[1]}/ws" for sock in (refused, silent)]
        gen = Generator()
        answer = await gen.connect("bare", [Member(i, url, "r") for i, url in enumerate(urls)], 4, "", deadline=0.3)
    assert answer["connected"] == 0
    assert answer["failed"] == 2
    assert answer["error_kinds"] == {"ConnectionRefusedError": 1, "TimeoutError": 1}
    assert answer["joins"].total == 0
    assert gen.clients == []
