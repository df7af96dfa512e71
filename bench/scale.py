"""The scale scenario: does one more node add capacity when there are many small rooms?

The rooms workload (two-member rooms, both members chatting) runs on two topologies of the same
system, one with 2 nodes and one with 3, at the same offered rates, and measures on each:

- the cost at one fixed moderate rate: server CPU µs per delivery summed over the nodes, and each
  node's CPU. A warm-up first has every member send once, so that no first message to a room (and
  whatever a server sets up for it) falls into the figures;
- the capacity: rising rates, stopping after the first with p99 > 100 ms or any loss; the highest
  passing rate is the capacity. A rate that fails by a p99 under a second alone gets a second try,
  so that a burst of other work on the machine does not end the search by itself (a server clearly
  past its capacity builds a backlog of seconds, and trying it again would only take time).

Both topologies run side by side and take turns: the cost is measured in alternating rounds and the
search runs each rate on one and then the other, while the topology not being measured sits idle
with its connections open. Work that comes and goes on the machine then weighs on both alike. The
cost counts all the CPU a topology's nodes used from the first cost round to the last, their idle
turns included: work a server does on a timer (presence upkeep, pings) comes in bursts seconds
apart, and a span of a few rounds catches it as often for one topology as for the other.

Clients connect round-robin, connection ``i`` to node ``i mod N``, as a round-robin load balancer
spreads them: a room's two members always sit on two different nodes, so every message crosses
Redis to exactly two nodes with 2 nodes as with 3, and with 3 nodes each node holds 2/3 of the rooms.
A system that subscribes a node only to the rooms it has members in does the same work per delivery
with 3 nodes as with 2; one whose every node decodes every message does 3/2 of that part of it.

Each topology also reports what bounded its capacity on the machine it ran on: at the top passing
rate, the busiest node's, the load generator's and Redis's CPU as % of what each can use, the
machine's busy %, and which of the three was nearest its limit. A capacity reached with the load
generator or Redis nearest, or with every core busy, is the box's ceiling rather than the system's.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench.drive import Drive, saturation
from bench.loadgen import LoadGen, Member
from bench.procs import cpu_seconds
from bench.scenarios import P99_LIMIT_MS, user
from bench.systems import System, Topology

NAME = "scale"
NODE_COUNTS = (2, 3)  # the first is the baseline the ratios divide by
RETRY_BELOW_MS = 1000.0


@dataclass(frozen=True)
class ScaleSizes:
    """How big and how long the scale scenario is, per topology."""

    rooms: int
    rates: tuple[float, ...]  # the capacity search's offered rates, the same for every node count
    step_seconds: float
    cost_rate: float
    cost_rounds: int
    cost_round_seconds: float
    warmup_rate: float  # the warm-up sends one message per member at this rate
    drain_idle: float = 2.0
    padding: int = 24


# About 30 s per topology for a Python system on 2 cores, most of it the rate search.
FULL = ScaleSizes(
    rooms=1000,
    rates=(600, 900, 1300, 1800, 2500, 3500, 5000, 7000, 10000),  # about 1.4x apart; 2 cores saturate near the top
    step_seconds=1.5,
    cost_rate=500.0,  # well below what every Python system sustains here, so no backlog inflates the cost
    cost_rounds=4,  # the cost span, about 25 s, covers a 20-25 s timer of a server once
    cost_round_seconds=2.5,
    warmup_rate=1000.0,
)
QUICK = ScaleSizes(
    rooms=50,
    rates=(50.0, 100.0),
    step_seconds=1.0,
    cost_rate=50.0,
    cost_rounds=2,
    cost_round_seconds=2.0,
    warmup_rate=100.0,
)


def passed(step: dict[str, Any]) -> bool:
    return not step["lost"] and step["p99_ms"] <= P99_LIMIT_MS


@dataclass
class Side:
    """One topology of the comparison, its clients, and what was measured on it."""

    drive: Drive
    senders: list[int]
    rooms: dict[str, int]
    setup: dict[str, Any]
    warmup: dict[str, Any] | None = None  # its figures are kept but count only for losses
    cost_steps: list[dict[str, Any]] = field(default_factory=list)
    cost_cpu: list[float] = field(default_factory=list)  # per node: CPU seconds over the whole cost span
    cost_redis: float = 0.0  # Redis CPU seconds over the same span
    cost_wall: float = 0.0  # seconds of this side's own rounds
    steps: list[dict[str, Any]] = field(default_factory=list)
    searching: bool = True

    @property
    def topology(self) -> Topology:
        return self.drive.topology

    @property
    def nodes(self) -> int:
        return len(self.topology.nodes)

    async def step(self, number: int, rate: float, seconds: float, sizes: ScaleSizes) -> dict[str, Any]:
        return await self.drive.step(number, self.senders, rate, seconds, self.rooms, drain_idle=sizes.drain_idle)


async def _open(system: System, drive: Drive, first: int, sizes: ScaleSizes) -> Side:
    """Make the rooms on the drive's topology and connect their members, indexed from ``first``, round-robin."""
    topology = drive.topology
    ports, started = topology.ports, time.monotonic()
    ids = await system.make_rooms(ports[0], [[user(2 * r), user(2 * r + 1)] for r in range(sizes.rooms)])
    members = [
        Member(first + i, system.url(ports[i % len(ports)], user(i)), ids[i // 2]) for i in range(2 * sizes.rooms)
    ]
    rooms_seconds = time.monotonic() - started
    connect_seconds = await drive.connect(members)
    setup = {
        "connections": len(members),
        "rooms_seconds": round(rooms_seconds, 2),
        "connect_seconds": round(connect_seconds, 2),
    }
    return Side(drive, [m.index for m in members], dict.fromkeys(ids, 2), setup)


def _cpu(side: Side) -> tuple[list[float], float]:
    """CPU seconds used so far by each of the side's nodes, and by its Redis."""
    return [cpu_seconds(p.pid) for p in side.topology.nodes], cpu_seconds(side.topology.redis.pid)


async def _cost(sides: list[Side], numbers: Iterator[int], sizes: ScaleSizes) -> None:
    """The fixed-rate rounds, taking turns; each side is charged all its CPU over the span of them."""
    before = [_cpu(side) for side in sides]
    for _round in range(sizes.cost_rounds):
        for side in sides:
            started = time.monotonic()
            side.cost_steps.append(await side.step(next(numbers), sizes.cost_rate, sizes.cost_round_seconds, sizes))
            side.cost_wall += time.monotonic() - started
    for side, (nodes, redis) in zip(sides, before, strict=True):
        nodes_after, redis_after = _cpu(side)
        side.cost_cpu = [a - b for a, b in zip(nodes_after, nodes, strict=True)]
        side.cost_redis = redis_after - redis


async def _search_rate(side: Side, numbers: Iterator[int], rate: float, sizes: ScaleSizes) -> None:
    """Run ``rate`` on ``side`` (twice if the first try fails by a short p99 alone); stop its search on failure."""
    for attempt in range(2):
        step = await side.step(next(numbers), rate, sizes.step_seconds, sizes)
        side.steps.append({**step, "retry": attempt > 0})
        if passed(step) or step["lost"] or step["p99_ms"] >= RETRY_BELOW_MS:
            break
    side.searching = passed(side.steps[-1])


async def _measure(sides: list[Side], sizes: ScaleSizes) -> None:
    numbers = itertools.count(1)  # step numbers unique across both sides: the load generators are shared
    for side in sides:
        seconds = len(side.senders) / sizes.warmup_rate
        side.warmup = await side.step(next(numbers), sizes.warmup_rate, seconds, sizes)
    await _cost(sides, numbers, sizes)
    for rate in sizes.rates:
        for side in sides:
            if side.searching:
                await _search_rate(side, numbers, rate, sizes)
        if not any(side.searching for side in sides):
            break


def _result(side: Side, sizes: ScaleSizes) -> dict[str, Any]:
    """What one topology came to: its cost over all rounds, its capacity, and every step."""
    deliveries = sum(s["delivered"] for s in side.cost_steps)
    ok = [s["rate"] for s in side.steps if passed(s)]
    # What bounded the capacity on this machine: each part's CPU at the top passing rate (or the first
    # rate, when none passed), and at the rate that ended the search.
    top = [s for s in side.steps if passed(s)] or side.steps[:1]
    ended = side.steps[-1] if side.steps and not passed(side.steps[-1]) else None
    return {
        "nodes": side.nodes,
        **side.setup,
        "cost": {
            "rate": sizes.cost_rate,
            "seconds": sizes.cost_round_seconds * sizes.cost_rounds,
            "delivered": deliveries,
            "server_cpu_us_per_delivery": _per(sum(side.cost_cpu), deliveries),
            "redis_cpu_us_per_delivery": _per(side.cost_redis, deliveries),
            # All of a node's CPU over the span, per second of its own rounds: sums to the cost per delivery.
            "node_cpu_pct": [round(cpu / side.cost_wall * 100, 1) for cpu in side.cost_cpu],
            "p99_ms": max(s["p99_ms"] for s in side.cost_steps),  # the worse round's
        },
        "warmup": side.warmup,
        "cost_steps": side.cost_steps,
        "steps": side.steps,
        "max_ok_rate": ok[-1] if ok else 0,
        # Every offered rate passed: the capacity is only known to be at least the top rate.
        "top_rate_passed": bool(ok) and ok[-1] == sizes.rates[-1],
        "limits": {"rate": top[-1]["rate"], "passed": bool(ok), **saturation(top[-1])} if top else None,
        "limits_at_failure": {"rate": ended["rate"], **saturation(ended)} if ended else None,
    }


def _per(seconds: float, deliveries: int) -> float | None:
    return round(seconds * 1e6 / deliveries, 1) if deliveries else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-node-count figures side by side, the ratios of the last node count to the first, and losses."""
    summary: dict[str, Any] = {}
    for run in runs:
        n, cost = run["nodes"], run["cost"]
        summary[f"max_ok_rate_{n}"] = run["max_ok_rate"]
        summary[f"top_rate_passed_{n}"] = run["top_rate_passed"]
        summary[f"server_cpu_us_per_delivery_{n}"] = cost["server_cpu_us_per_delivery"]
        summary[f"redis_cpu_us_per_delivery_{n}"] = cost["redis_cpu_us_per_delivery"]
        summary[f"node_cpu_pct_{n}"] = cost["node_cpu_pct"]
        summary[f"p99_ms_{n}"] = cost["p99_ms"]
        summary[f"limits_{n}"] = run["limits"]
    base, more = runs[0], runs[-1]
    summary["capacity_ratio"] = _ratio(more["max_ok_rate"], base["max_ok_rate"])
    summary["cpu_ratio"] = _ratio(
        more["cost"]["server_cpu_us_per_delivery"], base["cost"]["server_cpu_us_per_delivery"]
    )
    every = [s for run in runs for s in (run["warmup"], *run["cost_steps"], *run["steps"]) if s]
    summary["lost"] = sum(s["lost"] for s in every)
    summary["duplicated"] = sum(s["duplicated"] for s in every)
    return summary


async def run(system: System, loadgens: list[LoadGen], sizes: ScaleSizes) -> dict[str, Any]:
    """Measure ``system`` with each node count, side by side; errors are reported, not raised."""
    sides: list[Side] = []
    try:
        with ExitStack() as stack:
            drives: list[Drive] = []
            try:
                for number, nodes in enumerate(NODE_COUNTS):
                    topology = stack.enter_context(system.running(nodes=nodes))
                    drives.append(Drive(topology, loadgens, system.wire, sizes.padding))
                    sides.append(await _open(system, drives[-1], number * 2 * sizes.rooms, sizes))
                await _measure(sides, sizes)
            finally:
                for drive in drives:
                    await drive.disconnect()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    runs = [_result(side, sizes) for side in sides]
    return {"summary": summarize(runs), "runs": runs}
