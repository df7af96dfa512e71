"""The five scenarios, each bounded in time and in count, each run on a fresh topology.

- fanout: one big room spread over both nodes, one sender at rising rates until p99 > 100 ms or loss;
- idle: many connections on one node, each in a small room: memory per connection and idle CPU,
  then one message per room to prove every connection still delivers;
- rooms: many two-member rooms, one member on each node, both chatting;
- bot: users talk to their own echo bots served by two workers at rising rates; time to the bot's reply;
- storm: every client of many two-member rooms connects, authenticates and joins at once, as after a
  node died, resuming from its last message where the system can: connections per second, CPU per
  connection, time to ``joined``, errors.

Each returns ``{"summary": {...}, ...}``; the summaries of the first four have the same keys, the
storm's its own (it sends no messages). A storm with failed connections also carries ``error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.drive import Drive, Meter, limit_label
from bench.loadgen import LoadGen, Member
from bench.systems import System

P99_LIMIT_MS = 100.0


@dataclass(frozen=True)
class Sizes:
    """How big and how long each scenario is."""

    fanout_members: int
    fanout_rates: tuple[float, ...]
    step_seconds: float
    idle_connections: int
    idle_room_size: int
    idle_seconds: float
    rooms: int
    rooms_rate: float
    rooms_seconds: float
    bots: int
    bot_rates: tuple[float, ...]  # requests/s over all bots, one step each on the same topology
    bot_seconds: float
    storm_connections: int
    storm_concurrency: int  # handshakes in flight per load-generator process: enough that the servers set the pace
    storm_seconds: float  # a connection not joined by then fails
    drain_idle: float
    padding: int = 24  # filler after the ~40-character marker: texts of a typical chat line's length


FULL = Sizes(
    fanout_members=2000,
    fanout_rates=(2, 5, 10, 25, 50, 100, 200),
    step_seconds=3.0,
    idle_connections=10_000,
    idle_room_size=10,
    idle_seconds=5.0,
    rooms=1000,
    rooms_rate=1000.0,
    rooms_seconds=10.0,
    bots=50,
    bot_rates=(50, 100, 200),
    bot_seconds=10.0,
    storm_connections=10_000,
    storm_concurrency=500,
    storm_seconds=120.0,
    drain_idle=2.0,
)
QUICK = Sizes(
    fanout_members=200,
    fanout_rates=(5, 10, 25),
    step_seconds=1.0,
    idle_connections=1000,
    idle_room_size=10,
    idle_seconds=1.0,
    rooms=100,
    rooms_rate=200.0,
    rooms_seconds=2.0,
    bots=5,
    bot_rates=(10,),
    bot_seconds=2.0,
    storm_connections=1000,
    storm_concurrency=500,
    storm_seconds=30.0,
    drain_idle=2.0,
)


def user(index: int) -> str:
    return f"u{index}"


def _summary(step: dict[str, Any], steps: list[dict[str, Any]], rss_per_conn: float | None) -> dict[str, Any]:
    """The figures every scenario reports, from its representative step; losses summed over all steps."""
    keys = (
        "deliveries_per_s",
        "server_cpu_us_per_delivery",
        "redis_cpu_us_per_delivery",
        "redis_cpu_us_per_message",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "loadgen_cpu_pct",
        "loadgen_cpu_pct_max",
        "frames_per_delivery",
        "other_cpu_pct",
    )
    summary = {key: step.get(key) for key in keys}
    summary["lost"] = sum(s["lost"] for s in steps) + sum(s.get("replies_lost", 0) for s in steps)
    summary["duplicated"] = sum(s["duplicated"] for s in steps) + sum(s.get("replies_duplicated", 0) for s in steps)
    summary["rss_per_conn_kb"] = rss_per_conn
    return summary


async def _connect(drive: Drive, members: list[Member], nodes: list[int] | None = None) -> dict[str, Any]:
    """Connect ``members`` and return the setup figures, with RSS per connection on ``nodes``."""
    before = drive.rss(nodes)
    seconds = await drive.connect(members)
    after = drive.rss(nodes)
    return {
        "connections": len(members),
        "connect_seconds": round(seconds, 2),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "rss_per_conn_kb": round((after - before) / len(members) / 1024, 2),
    }


async def fanout(system: System, drive: Drive, sizes: Sizes) -> dict[str, Any]:
    n = sizes.fanout_members
    (room,) = await system.make_rooms(drive.topology.ports[0], [[user(i) for i in range(n)]])
    ports = drive.topology.ports
    members = [Member(i, system.url(ports[i % 2], user(i)), room) for i in range(n)]
    setup = await _connect(drive, members)
    steps: list[dict[str, Any]] = []
    for number, rate in enumerate(sizes.fanout_rates, start=1):
        step = await drive.step(number, [0], rate, sizes.step_seconds, {room: n}, drain_idle=sizes.drain_idle)
        steps.append(step)
        if step["lost"] or step["p99_ms"] > P99_LIMIT_MS:
            break
    passed = [s for s in steps if not s["lost"] and s["p99_ms"] <= P99_LIMIT_MS]
    summary = _summary(passed[-1] if passed else steps[0], steps, setup["rss_per_conn_kb"])
    summary["max_ok_rate"] = passed[-1]["rate"] if passed else 0
    return {"summary": summary, "setup": setup, "steps": steps}


async def idle(system: System, drive: Drive, sizes: Sizes) -> dict[str, Any]:
    size, n = sizes.idle_room_size, sizes.idle_connections
    groups = [[user(i) for i in range(start, min(start + size, n))] for start in range(0, n, size)]
    rooms = await system.make_rooms(drive.topology.ports[0], groups)
    port = drive.topology.ports[0]
    members = [Member(i, system.url(port, user(i)), rooms[i // size]) for i in range(n)]
    setup = await _connect(drive, members, nodes=[0])
    before = Meter.read(drive.topology)
    await asyncio.sleep(sizes.idle_seconds)
    after = Meter.read(drive.topology)
    setup["idle_cpu_pct"] = round((after.nodes - before.nodes) / sizes.idle_seconds * 100, 2)
    # One message per room, from its first member: every connection must still deliver.
    senders = [i for i in range(0, n, size)]
    rate = min(float(len(senders)), 500.0)
    room_sizes = {room: len(group) for room, group in zip(rooms, groups, strict=True)}
    step = await drive.step(1, senders, rate, len(senders) / rate, room_sizes, drain_idle=sizes.drain_idle)
    summary = _summary(step, [step], setup["rss_per_conn_kb"])
    summary["idle_cpu_pct"] = setup["idle_cpu_pct"]
    return {"summary": summary, "setup": setup, "steps": [step]}


async def rooms(system: System, drive: Drive, sizes: Sizes) -> dict[str, Any]:
    pairs = [[user(2 * r), user(2 * r + 1)] for r in range(sizes.rooms)]
    ids = await system.make_rooms(drive.topology.ports[0], pairs)
    ports = drive.topology.ports
    members = [Member(i, system.url(ports[i % 2], user(i)), ids[i // 2]) for i in range(2 * sizes.rooms)]
    setup = await _connect(drive, members)
    step = await drive.step(
        1,
        [m.index for m in members],
        sizes.rooms_rate,
        sizes.rooms_seconds,
        dict.fromkeys(ids, 2),
        drain_idle=sizes.drain_idle,
    )
    return {"summary": _summary(step, [step], setup["rss_per_conn_kb"]), "setup": setup, "steps": [step]}


async def bot(system: System, drive: Drive, sizes: Sizes) -> dict[str, Any]:
    users = [user(i) for i in range(sizes.bots)]
    started = time.monotonic()
    ids = await system.make_bot_rooms(drive.topology.ports[0], users)  # type: ignore[attr-defined]
    ports = drive.topology.ports
    members = [Member(i, system.url(ports[i % 2], users[i]), ids[i]) for i in range(sizes.bots)]
    setup = await _connect(drive, members)
    setup["bots_start_seconds"] = round(time.monotonic() - started, 2)
    senders = list(range(sizes.bots))
    steps = [
        await drive.step(number, senders, rate, sizes.bot_seconds, dict.fromkeys(ids, 1), drain_idle=sizes.drain_idle)
        for number, rate in enumerate(sizes.bot_rates, start=1)
    ]
    # the summary is the highest rate; the steps show how reply time and worker CPU move with the rate
    summary = _summary(steps[-1], steps, setup["rss_per_conn_kb"])
    for key in ("reply_p50_ms", "reply_p99_ms", "reply_max_ms", "worker_cpu_us_per_reply"):
        summary[key] = steps[-1].get(key)
    summary["replies_wrong"] = sum(s.get("replies_wrong", 0) for s in steps)  # not the text that was sent
    summary["bot_rate"] = steps[-1]["rate"]
    return {"summary": summary, "setup": setup, "steps": steps}


# The storm's figures that make its summary; the rest (CPU % of each part, error kinds) stay in its "storm" record.
STORM_KEYS = (
    "connections",
    "joined",
    "errors",
    "dropped",
    "connections_per_s",
    "server_cpu_us_per_conn",
    "redis_cpu_us_per_conn",
    "join_p50_ms",
    "join_p99_ms",
    "join_max_ms",
    "rss_per_conn_kb",
    "listen_overflows",
    "loadgen_cpu_pct_max",
    "other_cpu_pct",
)


async def storm(system: System, drive: Drive, sizes: Sizes) -> dict[str, Any]:
    """Every connection at once, as after a node died; failed joins are counted and make the scenario fail."""
    pairs = [[user(2 * r), user(2 * r + 1)] for r in range(sizes.storm_connections // 2)]
    ports = drive.topology.ports
    started = time.monotonic()
    ids = await system.make_rooms(ports[0], pairs)
    since = await system.resume_points(ports[0], ids)
    setup = {"rooms": len(ids), "rooms_seconds": round(time.monotonic() - started, 2)}
    members = [Member(i, system.url(ports[i % 2], user(i)), ids[i // 2], since[i // 2]) for i in range(2 * len(pairs))]
    figures = await drive.storm(members, sizes.storm_concurrency, sizes.storm_seconds)
    summary = {key: figures[key] for key in STORM_KEYS}
    summary["nearest_limit"] = limit_label(figures["limits"])
    result: dict[str, Any] = {"summary": summary, "setup": setup, "storm": figures}
    if figures["errors"] or figures["dropped"]:
        # Reported as a failure of the scenario (the run exits 1), with every figure kept.
        result["error"] = (
            f"{figures['errors']} of {figures['connections']} connections failed to join "
            f"({', '.join(f'{k} {n}' for k, n in figures['error_kinds'].items()) or 'none'}) and "
            f"{figures['dropped']} were closed after joining; e.g. {figures['error_samples'][:2]}"
        )
    return result


Scenario = Callable[[System, Drive, Sizes], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {"fanout": fanout, "idle": idle, "rooms": rooms, "bot": bot, "storm": storm}
WORKERS = {"bot": 2}  # bot workers each scenario needs (systems with bots only)


async def run(system: System, name: str, loadgens: list[LoadGen], sizes: Sizes) -> dict[str, Any]:
    """Run scenario ``name`` on a fresh topology of ``system``; errors are reported, not raised."""
    if name == "bot" and not system.has_bots:
        return {"skipped": f"{system.name} has no bots"}
    try:
        with system.running(nodes=2, workers=WORKERS.get(name, 0)) as topology:
            drive = Drive(topology, loadgens, system.wire, sizes.padding)
            try:
                return await SCENARIOS[name](system, drive, sizes)
            finally:
                await drive.disconnect()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
