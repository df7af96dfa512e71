"""The storm scenario's quick run connects every client of ours and of the bare peer and reports its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, scaled

STORM_KEYS = (
    "connections_per_s",
    "server_cpu_us_per_conn",
    "redis_cpu_us_per_conn",
    "join_p50_ms",
    "join_p99_ms",
    "join_max_ms",
    "errors",
    "dropped",
)


@pytest.mark.slow
@pytest.mark.timeout(scaled(240))
def test_quick_storm_joins_everyone_on_ours_and_a_peer(tmp_path: Path) -> None:
    """A quick storm joins all 1,000 clients on ours and on bare, with every figure and ratio reported."""
    args = ["--quick", "--scenarios", "storm", "--systems", "ours,bare", "--out", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(200),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    for system in ("ours", "bare"):
        result = data["results"]["storm"][system]
        summary = result["summary"]
        assert set(STORM_KEYS) <= set(summary), summary
        assert summary["errors"] == 0, result
        assert summary["dropped"] == 0, result
        assert summary["joined"] == summary["connections"] == data["meta"]["sizes"]["storm_connections"], summary
        assert summary["connections_per_s"] > 0, summary
        assert 0 < summary["join_p50_ms"] <= summary["join_p99_ms"] <= summary["join_max_ms"], summary
        assert summary["server_cpu_us_per_conn"] > 0, summary
        assert result["storm"]["limits"]["closest"] in ("server", "loadgen", "redis"), result["storm"]
    assert set(data["results"]["storm"]["ours"]["storm"]["error_kinds"]) == set()
    ratios = data["ratios"]["storm"]["bare"]
    assert ratios["server_cpu_us_per_conn"] > 0, ratios
    assert ratios["join_p99_ms"] > 0, ratios
    markdown = (tmp_path / "results.md").read_text()
    assert "## storm" in markdown
    assert "| system | connections | errors |" in markdown
    assert "join_p99_ms" in markdown  # the ratios table
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
