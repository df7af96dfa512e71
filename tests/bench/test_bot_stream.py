"""The bot_stream scenario: how the load generator checks streamed replies, how the report shows them, and its quick run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench import bot_stream, report
from bench.loadgen import Client, Generator, Member
from bench.stats import marker
from bench.wire import OursWire
from tests.procs import ROOT, scaled

BOT = {"id": "b1", "name": "echo", "kind": "bot"}


def _generator(words: int) -> tuple[Generator, Client]:
    gen = Generator()
    gen.decoder, gen.filler = OursWire(), bot_stream.filler(words)
    gen.begin(step=1)
    client = Client(Member(0, "ws://127.0.0.1:1/ws", "r"), ws=None, joined_ns=0)  # type: ignore[arg-type]
    return gen, client


def _frame(kind: str, text: str, reply_to: str = "m1", attempt: int = 1, seq: int = 1) -> str:
    if kind == "message":
        body: dict[str, Any] = {"id": "m2", "room": "r", "from": BOT, "text": text, "reply_to": reply_to}
    else:
        body = {"room": "r", "reply_to": reply_to, "text": text, "attempt": attempt, "seq": seq}
    return orjson.dumps({"type": kind, **body}).decode()


def _words(text: str) -> list[str]:
    head, *rest = text.split(" ")
    return [head + " ", *(w + " " for w in rest[:-1]), rest[-1]]


def test_a_reply_streamed_in_order_counts_its_deltas_and_no_fault() -> None:
    """Deltas spelling the final text, which is the sent text, count as deltas with a first-delta time and no fault."""
    gen, client = _generator(4)
    text = marker(1, 0, 0) + gen.filler
    for seq, word in enumerate(_words(text), start=1):
        gen._on_text(client, _frame("delta", word, seq=seq))
    gen._on_text(client, _frame("message", text))
    tally = gen.stream
    assert (tally.deltas, tally.gaps, tally.repeats, tally.broken, tally.unstreamed, tally.wrong_text) == (
        4,
        0,
        0,
        0,
        0,
        0,
    )
    assert tally.first_delta.total == 1
    assert gen.tallies[1].unique == 1
    assert client.streams == {}


def test_gaps_repeats_broken_streams_and_wrong_texts_are_counted() -> None:
    """A skipped seq, a repeated one, a final text unlike the deltas and a reply unlike the sent text are faults."""
    gen, client = _generator(3)
    text = marker(1, 0, 0) + gen.filler
    first, _second, third = _words(text)
    gen._on_text(client, _frame("delta", first, seq=1))
    gen._on_text(client, _frame("delta", first, seq=1))
    gen._on_text(client, _frame("delta", third, seq=3))
    gen._on_text(client, _frame("message", text))
    gen._on_text(client, _frame("message", marker(1, 0, 1) + " other", reply_to="m9"))
    tally = gen.stream
    assert (tally.deltas, tally.repeats, tally.gaps, tally.broken) == (3, 1, 1, 1)
    assert tally.unstreamed == 1  # the second reply had no delta
    assert tally.wrong_text == 1
    assert client.streams == {}


def test_a_new_attempt_starts_the_reply_again() -> None:
    """A stream frame of a new attempt drops what the first attempt spelled; its deltas then spell the final text."""
    gen, client = _generator(2)
    text = marker(1, 0, 0) + gen.filler
    first, second = _words(text)
    gen._on_text(client, _frame("delta", first, seq=1))
    gen._on_text(client, _frame("stream", "", attempt=2, seq=0))
    gen._on_text(client, _frame("delta", first, attempt=2, seq=1))
    gen._on_text(client, _frame("delta", second, attempt=2, seq=2))
    gen._on_text(client, _frame("delta", second, attempt=1, seq=2))  # late piece of the abandoned attempt
    gen._on_text(client, _frame("message", text))
    tally = gen.stream
    assert (tally.snapshots, tally.deltas, tally.repeats, tally.gaps, tally.broken) == (1, 4, 1, 0, 0)


def _side(deltas: float, publishes: float, server: float) -> dict[str, Any]:
    row = dict.fromkeys(bot_stream.SIDE_KEYS, 1.0)
    row |= {"deltas_per_reply": deltas, "publishes_per_reply": publishes, "server_cpu_us_per_reply": server}
    row |= {"worker_cpu_us_per_reply": server, "redis_cpu_us_per_reply": server / 2}
    return row | {"lost": 0, "duplicated": 0, "faults": 0}


def test_report_shows_before_after_and_their_ratio(tmp_path: Path) -> None:
    """results.md has a bot_stream table with a before row, an after row, their ratio and the CPU a delta costs."""
    pytest.importorskip("matplotlib")
    summary = bot_stream.summarize({"before": _side(50.0, 56.0, 10_000.0), "after": _side(10.0, 16.0, 4_000.0)})
    assert summary["publishes_per_reply_ratio"] == 0.29
    assert summary["server_cpu_us_per_delta_saved"] == 150.0
    data = {
        "meta": {"quick": True, "started": "now", "cpus": 2, "python": "3.11", "load_before": 0.5},
        "systems": {"ours": "ok", "bare": "ok"},
        "results": {
            "bot_stream": {"ours": {"summary": summary}, "bare": {"skipped": "bare has no bots"}},
        },
    }
    markdown = report.write(data, tmp_path)[1].read_text()
    table = markdown.split("## bot_stream", 1)[1]
    assert "| system | coalescing | delta interval ms | replies | deltas/reply | Redis publishes/reply |" in table
    assert "| `ours` | before | 1.00 | 1.00 | 50.00 | 56.00 |" in table
    assert "| `ours` | after | 1.00 | 1.00 | 10.00 | 16.00 |" in table
    assert "| `ours` | after / before |  |  | 0.20 | 0.29 |" in table
    assert "each delta fewer per reply saved 150 µs of the gateway nodes" in table
    assert "- `bare`: bare has no bots" in table


@pytest.mark.slow
@pytest.mark.timeout(scaled(180))
def test_quick_bot_stream_reports_before_and_after_coalescing(tmp_path: Path) -> None:
    """A quick bot_stream run streams every reply whole, before and after coalescing, and reports every figure."""
    args = ["--quick", "--scenarios", "bot_stream", "--systems", "ours,bare", "--out", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=scaled(150)
    )
    assert run.returncode == 0, run.stderr[-4000:]
    data = json.loads((tmp_path / "results.json").read_text())
    result = data["results"]["bot_stream"]["ours"]
    summary = result["summary"]
    words = data["meta"]["bot_stream_sizes"]["words"]
    for name, interval in bot_stream.SIDES:
        side = summary[name]
        assert set(bot_stream.SIDE_KEYS) <= set(side), side
        assert side["delta_interval_ms"] == interval
        assert side["replies"] > 0, result["sides"][name]
        assert (side["lost"], side["duplicated"], side["faults"]) == (0, 0, 0), result["sides"][name]
        assert side["publishes_per_reply"] >= side["deltas_per_reply"] > 0, side
        for key in ("server_cpu_us_per_delta", "server_cpu_us_per_reply", "reply_p50_ms", "first_delta_p50_ms"):
            assert side[key] is not None, (key, side)
    assert summary["before"]["deltas_per_reply"] == words  # one delta per piece
    assert summary["after"]["deltas_per_reply"] < words
    assert summary["publishes_per_reply_ratio"] < 1, summary
    assert data["results"]["bot_stream"]["bare"] == {"skipped": "bare has no bots"}
    markdown = (tmp_path / "results.md").read_text()
    assert "| `ours` | after / before |" in markdown
