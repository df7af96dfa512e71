"""The bot_stream scenario: what streaming a bot's reply costs, with the workers' coalescing off and on.

Users talk to their own echo bots, which stream every reply word by word (``config.pace`` seconds
apart), the way a language model streams tokens: a message of ``words`` words comes back as that
many pieces, then the final message. The workers run once with ``CHAT_DELTA_INTERVAL_MS=0`` (one
``delta`` per piece: *before* coalescing) and once with 50 ms (the default: pieces written within
50 ms go out as one ``delta``: *after*), each on a fresh topology of two gateway nodes, two workers
and a redis-server, with the same users, bots and load.

Each side has a warm-up (every user sends once, so that no first request of a bot falls into the
figures), then one measured step. Per reply it reports the deltas the client received, the Redis
publishes (PUBLISH and SPUBLISH calls, those run inside scripts included, from ``INFO
commandstats`` before and after the step), the scripts and all Redis commands; the gateway nodes'
CPU per delivered delta and per reply, the workers' and Redis's CPU per reply; the time from the
send to the reply's first delta and to its final message. Every reply is checked: the final text
must equal the sent text and what its deltas spelled, in order, with no gap or repeat; any fault,
lost or duplicated reply makes the scenario fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from bench.drive import Drive
from bench.loadgen import LoadGen, Member
from bench.procs import redis_calls
from bench.systems import System

NAME = "bot_stream"
# (side, CHAT_DELTA_INTERVAL_MS given to the workers): one delta per piece, then the default coalescing.
SIDES = (("before", 0.0), ("after", 50.0))
PUBLISH_COMMANDS = ("publish", "spublish")
SCRIPT_COMMANDS = ("evalsha", "eval", "fcall")
UNCOUNTED_COMMANDS = ("info",)  # the bench's own reads of the counters


@dataclass(frozen=True)
class StreamSizes:
    """How big and how long each side of the bot_stream scenario is."""

    bots: int  # users, each with its own echo bot
    rate: float  # requests/s over all bots; a bot answers one at a time, so keep it under 1/(words * pace) per bot
    seconds: float  # the measured step
    words: int = 50  # pieces per reply
    pace: float = 0.01  # seconds between pieces: a 50-piece reply streams for about half a second
    drain_idle: float = 2.0


FULL = StreamSizes(bots=20, rate=20.0, seconds=10.0)
QUICK = StreamSizes(bots=5, rate=5.0, seconds=2.0)

# Per side, the figures the summary and the report carry.
SIDE_KEYS = (
    "delta_interval_ms",
    "replies",
    "deltas_per_reply",
    "publishes_per_reply",
    "scripts_per_reply",
    "redis_commands_per_reply",
    "server_cpu_us_per_delta",
    "server_cpu_us_per_reply",
    "worker_cpu_us_per_reply",
    "redis_cpu_us_per_reply",
    "first_delta_p50_ms",
    "first_delta_p99_ms",
    "reply_p50_ms",
    "reply_p99_ms",
    "reply_max_ms",
    "lost",
    "duplicated",
    "faults",
    "loadgen_cpu_pct_max",
    "other_cpu_pct",
)
# after / before for these: below 1, coalescing saves.
RATIO_KEYS = (
    "deltas_per_reply",
    "publishes_per_reply",
    "server_cpu_us_per_reply",
    "worker_cpu_us_per_reply",
    "redis_cpu_us_per_reply",
    "reply_p99_ms",
)


def filler(words: int) -> str:
    """What follows the marker (itself the first word) in every text: ``words`` words in all."""
    return "".join(f" w{i}" for i in range(1, words))


def _per(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 2) if denominator else None


def _calls(before: dict[str, int], after: dict[str, int], names: tuple[str, ...]) -> int:
    return sum(after.get(name, 0) - before.get(name, 0) for name in names)


async def _side(
    system: System, loadgens: list[LoadGen], sizes: StreamSizes, first: int, interval: float
) -> dict[str, Any]:
    """One side on a fresh topology whose workers coalesce over ``interval`` ms; members indexed from ``first``."""
    env = {"CHAT_DELTA_INTERVAL_MS": f"{interval:g}"}
    started = time.monotonic()
    with system.running(nodes=2, workers=2, worker_env=env) as topology:
        drive = Drive(topology, loadgens, system.wire, 0, filler=filler(sizes.words))
        try:
            ports, up = topology.ports, time.monotonic()
            users = [f"u{first + i}" for i in range(sizes.bots)]
            ids = await system.make_bot_rooms(ports[0], users, {"pace": sizes.pace})  # type: ignore[attr-defined]
            members = [Member(first + i, system.url(ports[i % 2], u), ids[i]) for i, u in enumerate(users)]
            bots_seconds = time.monotonic() - up
            connect_seconds = await drive.connect(members)
            senders, sizes_by_room = [m.index for m in members], dict.fromkeys(ids, 1)
            warmup = await drive.step(1, senders, float(sizes.bots), 1.0, sizes_by_room, drain_idle=sizes.drain_idle)
            before = await redis_calls(topology.redis.port)
            step = await drive.step(2, senders, sizes.rate, sizes.seconds, sizes_by_room, drain_idle=sizes.drain_idle)
            after = await redis_calls(topology.redis.port)
        finally:
            await drive.disconnect()
    ended = time.monotonic()
    replies = step.get("replies", 0)
    counted = tuple(name for name in after if name not in UNCOUNTED_COMMANDS)
    step.update(
        delta_interval_ms=interval,
        publishes_per_reply=_per(_calls(before, after, PUBLISH_COMMANDS), replies),
        scripts_per_reply=_per(_calls(before, after, SCRIPT_COMMANDS), replies),
        redis_commands_per_reply=_per(_calls(before, after, counted), replies),
    )
    setup = {
        "bots": sizes.bots,
        "start_seconds": round(up - started, 2),
        "bots_seconds": round(bots_seconds, 2),
        "connect_seconds": round(connect_seconds, 2),
        "seconds": round(ended - started, 2),  # the whole side, from starting its processes to stopping them
    }
    return {"setup": setup, "warmup": warmup, "step": step}


def _faults(step: dict[str, Any]) -> int:
    """Replies that came back wrong: text not the sent one, or deltas that do not spell the final text in order."""
    keys = ("replies_wrong", "delta_gaps", "delta_repeats", "streams_broken", "replies_unstreamed")
    return sum(step.get(key, 0) for key in keys)


def side_summary(step: dict[str, Any], warmup: dict[str, Any]) -> dict[str, Any]:
    """One side's row: the measured step's figures, with losses and faults of the warm-up too."""
    row = {key: step.get(key) for key in SIDE_KEYS}
    both = (warmup, step)
    row["lost"] = sum(s["lost"] + s.get("replies_lost", 0) for s in both)
    row["duplicated"] = sum(s["duplicated"] + s.get("replies_duplicated", 0) for s in both)
    row["faults"] = sum(_faults(s) for s in both)
    return row


def summarize(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Both sides' rows, after / before for the costs, and the losses and faults summed."""
    before, after = (rows[name] for name, _ in SIDES)
    summary: dict[str, Any] = dict(rows)
    for key in RATIO_KEYS:
        a, b = after.get(key), before.get(key)
        summary[f"{key}_ratio"] = (
            round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
        )
    # What one delta fewer saved, per part: the drop in CPU per reply over the drop in deltas per reply.
    for part in ("server", "worker", "redis"):
        summary[f"{part}_cpu_us_per_delta_saved"] = _saved(before, after, f"{part}_cpu_us_per_reply")
    for key in ("lost", "duplicated", "faults"):
        summary[key] = sum(row[key] for row in rows.values())
    return summary


def _saved(before: dict[str, Any], after: dict[str, Any], key: str) -> float | None:
    fewer = (before.get("deltas_per_reply") or 0) - (after.get("deltas_per_reply") or 0)
    a, b = after.get(key), before.get(key)
    if not isinstance(a, int | float) or not isinstance(b, int | float) or fewer <= 0:
        return None
    return round((b - a) / fewer, 1)


async def run(system: System, loadgens: list[LoadGen], sizes: StreamSizes) -> dict[str, Any]:
    """Measure ``system`` with coalescing off, then on; errors are reported, not raised."""
    if not system.has_bots:
        return {"skipped": f"{system.name} has no bots"}
    sides: dict[str, dict[str, Any]] = {}
    try:
        for number, (name, interval) in enumerate(SIDES):
            sides[name] = await _side(system, loadgens, sizes, number * sizes.bots, interval)
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}", "sides": sides}
    summary = summarize({name: side_summary(side["step"], side["warmup"]) for name, side in sides.items()})
    result: dict[str, Any] = {"summary": summary, "sides": sides}
    if summary["lost"] or summary["duplicated"] or summary["faults"]:
        result["error"] = (
            f"{summary['lost']} replies or messages lost, {summary['duplicated']} duplicated, "
            f"{summary['faults']} replies wrong or streamed out of order"
        )
    return result
