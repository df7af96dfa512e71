"""The benchmark suite's quick run works end to end against the gateway and the bare peer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, scaled

SCENARIOS = ("fanout", "idle", "rooms", "bot")


@pytest.mark.slow
@pytest.mark.timeout(scaled(600))
def test_quick_run_delivers_everything(tmp_path: Path) -> None:
    """A quick run measures every scenario with nothing lost or duplicated by the gateway and writes all files."""
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--systems", "ours,bare", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=scaled(540),
    )
    assert run.returncode == 0, run.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["systems"] == {"ours": "ok", "bare": "ok"}
    for scenario in SCENARIOS:
        summary = data["results"][scenario]["ours"]["summary"]
        assert summary["lost"] == 0, (scenario, data["results"][scenario]["ours"])
        assert summary["duplicated"] == 0, (scenario, data["results"][scenario]["ours"])
        assert summary["deliveries_per_s"] > 0, scenario
    for scenario in SCENARIOS[:3]:
        assert "summary" in data["results"][scenario]["bare"], data["results"][scenario]["bare"]
    assert data["ratios"]["fanout"]["bare"]["server_cpu_us_per_delivery"] > 0
    for system in ("ours", "bare"):
        scale = data["results"]["scale"][system]
        assert [run["nodes"] for run in scale["runs"]] == [2, 3], scale
        assert [len(run["cost"]["node_cpu_pct"]) for run in scale["runs"]] == [2, 3], scale
        assert scale["summary"]["cpu_ratio"] > 0, scale["summary"]
    assert data["results"]["scale"]["ours"]["summary"]["lost"] == 0, data["results"]["scale"]["ours"]
    assert data["results"]["scale"]["ours"]["summary"]["duplicated"] == 0, data["results"]["scale"]["ours"]
    markdown = (tmp_path / "results.md").read_text()
    assert "| `ours` |" in markdown
    assert "## scale" in markdown
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
