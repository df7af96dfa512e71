"""The mechanics shared by every scenario: connect clients, run one measured step, read the meters.

A step resets the load generators' counters, has the senders send at a rate for a while, waits for
the deliveries to drain (all expected ones arrived, or none for ``drain_idle`` seconds), and turns
the counters and the processes' CPU use over that window into figures.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadGen, Member
from bench.procs import cpu_seconds, listen_overflows, machine_busy_seconds, rss_bytes
from bench.stats import Histogram, StreamTally, Tally
from bench.systems import Topology

DRAIN_CAP = 30.0  # seconds a step may wait for stragglers after its senders stop
CONNECT_CONCURRENCY = 64  # handshakes in flight per load-generator process (setting up a scenario)
# After a storm's last join, its CPU is counted on until the nodes are quiet: work a server defers past
# ``joined`` (batched presence, subscriptions) is part of a connection's cost.
SETTLE_WINDOW = 0.25  # seconds per look at the nodes' CPU
SETTLE_QUIET = 0.10  # the nodes are quiet below this fraction of one core over a window
SETTLE_CAP = 3.0  # seconds of settling at most
CORES = len(os.sched_getaffinity(0))
MACHINE_FULL_PCT = 90.0  # all cores this busy: the box, not any one part, bounds the figure


@dataclass(frozen=True)
class Meter:
    """CPU seconds used so far by each group of processes."""

    per_node: tuple[float, ...]
    redis: float
    workers: float
    machine: float  # every process on the machine, to see how much other work competed

    @property
    def nodes(self) -> float:
        return sum(self.per_node)

    @classmethod
    def read(cls, topology: Topology) -> Meter:
        return cls(
            per_node=tuple(cpu_seconds(p.pid) for p in topology.nodes),
            redis=cpu_seconds(topology.redis.pid),
            workers=sum(cpu_seconds(p.pid) for p in topology.workers),
            machine=machine_busy_seconds(),
        )


def saturation(figures: dict[str, Any]) -> dict[str, Any]:
    """How near the servers, the load generator and Redis came to their limits over a step, and which was nearest.

    Each is given as % of what it can use: a node (Python or Node.js) and Redis each run on one
    thread, so the busiest node and Redis count against one core; the load generator counts its
    busiest process against one core, or all of its processes against the cores they can have,
    whichever is higher. ``machine_pct`` is every core's busy time, as % of all of them.
    """
    parts = {
        "server": max(figures["node_cpu_pct"], default=0.0),
        "loadgen": max(figures["loadgen_cpu_pct_max"], figures["loadgen_cpu_pct_of_cores"]),
        "redis": figures["redis_cpu_pct"],
    }
    return {
        **{f"{part}_pct": pct for part, pct in parts.items()},
        "machine_pct": figures["machine_cpu_pct"],
        "closest": max(parts, key=lambda part: parts[part]),
        "machine_full": figures["machine_cpu_pct"] >= MACHINE_FULL_PCT,
    }


def limit_label(limits: dict[str, Any] | None) -> str:
    """``saturation()`` in a few words: the nearest part and its %, and whether every core was busy."""
    if not limits:
        return "-"
    nearest = limits["closest"]
    text = f"{nearest} {limits[f'{nearest}_pct']:.0f} %"
    return text + (", all cores busy" if limits["machine_full"] else "")


def _per(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return round(numerator * scale / denominator, 2) if denominator else None


def _stream_figures(stream: StreamTally, replies: int, server: float, redis: float) -> dict[str, Any]:
    """The figures of a step whose bot replies were streamed: deltas per reply, their cost, their faults."""
    first = stream.first_delta.summary_ms()
    return {
        "deltas": stream.deltas,
        "deltas_per_reply": _per(stream.deltas, replies),
        "server_cpu_us_per_delta": _per(server, stream.deltas, 1e6),
        "server_cpu_us_per_reply": _per(server, replies, 1e6),
        "redis_cpu_us_per_reply": _per(redis, replies, 1e6),
        "first_delta_p50_ms": first["p50_ms"],
        "first_delta_p99_ms": first["p99_ms"],
        "stream_snapshots": stream.snapshots,
        "delta_gaps": stream.gaps,
        "delta_repeats": stream.repeats,
        "streams_broken": stream.broken,
        "replies_unstreamed": stream.unstreamed,
    }


class Drive:
    """One running system and the load generators pointed at it."""

    def __init__(
        self, topology: Topology, loadgens: list[LoadGen], wire: str, padding: int, *, filler: str | None = None
    ) -> None:
        self.topology = topology
        self.loadgens = loadgens
        self.wire = wire
        # What follows the marker in every sent text: ``padding`` characters, unless given.
        self.filler = "x" * padding if filler is None else filler
        self.placed: dict[int, int] = {}  # member index -> load generator number
        self.connections = 0

    def rss(self, nodes: list[int] | None = None) -> int:
        chosen = range(len(self.topology.nodes)) if nodes is None else nodes
        return sum(rss_bytes(self.topology.nodes[i].pid) for i in chosen)

    def check_alive(self) -> None:
        """Raise with the log tail of the first server process that has exited."""
        for proc in self.topology.processes():
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")

    async def _open(
        self, members: list[Member], concurrency: int, deadline: float | None = None
    ) -> list[dict[str, Any]]:
        """Have the load generators open ``members`` (member i on generator i mod their number); their answers."""
        shares: list[list[Member]] = [[] for _ in self.loadgens]
        for member in members:
            number = member.index % len(self.loadgens)
            shares[number].append(member)
            self.placed[member.index] = number
        answers = await asyncio.gather(
            *(
                lg.call(
                    "connect",
                    wire=self.wire,
                    members=share,
                    concurrency=concurrency,
                    filler=self.filler,
                    deadline=deadline,
                )
                for lg, share in zip(self.loadgens, shares, strict=True)
                if share
            )
        )
        self.connections += sum(a["connected"] for a in answers)
        return answers

    async def connect(self, members: list[Member]) -> float:
        """Open and join every member's connection, spread over the load generators; return seconds taken."""
        started = time.monotonic()
        answers = await self._open(members, CONNECT_CONCURRENCY)
        failed = sum(a["failed"] for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]][:3]
            raise RuntimeError(f"{failed} of {len(members)} connections failed, e.g. {errors}")
        return time.monotonic() - started

    async def storm(self, members: list[Member], concurrency: int, deadline: float) -> dict[str, Any]:
        """Open and join ``members`` as fast as the load generators can; return the storm's figures.

        Failed connections are counted and sampled, not raised. The costs count the CPU of the nodes
        and of Redis from the first connection until the nodes are quiet after the last join (at most
        ``SETTLE_CAP`` seconds more), per joined connection; the CPU percentages (how near each part
        came to its limit) cover the storm alone.
        """
        self.check_alive()
        rss_before, overflows = self.rss(), listen_overflows()
        started, before = time.monotonic(), Meter.read(self.topology)
        answers = await self._open(members, concurrency, deadline)
        wall, during = max(time.monotonic() - started, 1e-3), Meter.read(self.topology)
        overflows = listen_overflows() - overflows
        after, settle = await self._settled()
        rss_after = self.rss()
        self.check_alive()
        joins = Histogram()
        kinds: dict[str, int] = {}
        for answer in answers:
            joins.merge(answer["joins"])
            for kind, n in answer["error_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + n
        joined = sum(a["connected"] for a in answers)
        last_ns = max(a["last_joined_ns"] for a in answers)
        # From the first connection started to the last joined, as the load generators' clocks saw it.
        window = (last_ns - min(a["started_ns"] for a in answers)) / 1e9 if last_ns else wall
        loadgen_cpu = [a["cpu_s"] for a in answers]
        server, redis = after.nodes - before.nodes, after.redis - before.redis
        other = during.machine - before.machine - (during.nodes - before.nodes) - (during.redis - before.redis)
        other -= during.workers - before.workers + sum(loadgen_cpu)
        reports = await asyncio.gather(*(lg.call("report") for lg in self.loadgens))
        figures: dict[str, Any] = {
            "connections": len(members),
            "joined": joined,
            "errors": sum(a["failed"] for a in answers),
            "error_kinds": kinds,
            "error_samples": [e for a in answers for e in a["errors"]][:5],
            "dropped": sum(r["disconnected"] for r in reports),  # joined, then closed by the server
            # Connections the kernel held back because a node's accept queue was full (machine-wide counter).
            "listen_overflows": overflows,
            "concurrency": concurrency * len(answers),
            "seconds": round(window, 3),
            "settle_seconds": round(settle, 2),
            "connections_per_s": round(joined / max(window, 1e-3), 1),
            "server_cpu_us_per_conn": _per(server, joined, 1e6),
            "redis_cpu_us_per_conn": _per(redis, joined, 1e6),
            **{f"join_{key}": value for key, value in joins.summary_ms().items()},
            "rss_per_conn_kb": _per(rss_after - rss_before, joined, 1 / 1024),
            "server_cpu_pct": round((during.nodes - before.nodes) / wall * 100, 1),
            "node_cpu_pct": [
                round((a - b) / wall * 100, 1) for a, b in zip(during.per_node, before.per_node, strict=True)
            ],
            "redis_cpu_pct": round((during.redis - before.redis) / wall * 100, 1),
            "loadgen_cpu_pct": round(sum(loadgen_cpu) / wall * 100, 1),
            "loadgen_cpu_pct_max": round(max(loadgen_cpu) / wall * 100, 1),
            "loadgen_cpu_pct_of_cores": round(sum(loadgen_cpu) / wall / min(len(loadgen_cpu), CORES) * 100, 1),
            "machine_cpu_pct": round((during.machine - before.machine) / wall / CORES * 100, 1),
            "other_cpu_pct": round(max(other, 0) / wall * 100, 1),
        }
        return {**figures, "limits": saturation(figures)}

    async def _settled(self) -> tuple[Meter, float]:
        """The meters once the nodes used under ``SETTLE_QUIET`` of a core over a window; seconds waited."""
        started = time.monotonic()
        last = Meter.read(self.topology)
        while time.monotonic() - started < SETTLE_CAP:
            await asyncio.sleep(SETTLE_WINDOW)
            now = Meter.read(self.topology)
            quiet = now.nodes - last.nodes < SETTLE_QUIET * SETTLE_WINDOW
            last = now
            if quiet:
                break
        return last, time.monotonic() - started

    async def step(
        self,
        number: int,
        senders: list[int],
        rate: float,
        seconds: float,
        room_sizes: dict[str, int],
        *,
        drain_idle: float,
    ) -> dict[str, Any]:
        """Send ``rate`` msg/s for ``seconds`` from ``senders`` and measure what arrives; return the figures."""
        self.check_alive()
        local: list[list[int]] = [[] for _ in self.loadgens]
        for index in senders:
            local[self.placed[index]].append(index)
        await asyncio.gather(*(lg.call("begin", step=number) for lg in self.loadgens))
        before = Meter.read(self.topology)
        start_ns = time.monotonic_ns()
        sends = await asyncio.gather(
            *(
                lg.call("send", senders=mine, rate=rate * len(mine) / len(senders), duration=seconds)
                for lg, mine in zip(self.loadgens, local, strict=True)
            )
        )
        sent_by_room: dict[str, int] = {}
        for answer in sends:
            for room, n in answer["sent_by_room"].items():
                sent_by_room[room] = sent_by_room.get(room, 0) + n
        sent = sum(sent_by_room.values())
        expected = sum(n * room_sizes[room] for room, n in sent_by_room.items())
        reports = await self._drain(expected, sent if self.topology.workers else 0, drain_idle)
        after = Meter.read(self.topology)
        self.check_alive()
        return self._figures(reports, start_ns, before, after, rate, seconds, sent, expected)

    async def _drain(self, expected: int, replies: int, idle: float) -> list[dict[str, Any]]:
        """Poll the load generators until everything expected arrived or nothing new came for ``idle`` s."""
        last, last_change, cap = (-1, -1), time.monotonic(), time.monotonic() + DRAIN_CAP
        while True:
            reports = await asyncio.gather(*(lg.call("report") for lg in self.loadgens))
            got = (sum(r["message"].unique for r in reports), sum(r["reply"].unique for r in reports))
            now = time.monotonic()
            if got[0] >= expected and got[1] >= replies:
                return reports
            if got != last:
                last, last_change = got, now
            elif now - last_change > idle or now > cap:
                return reports
            await asyncio.sleep(0.05)

    def _figures(
        self,
        reports: list[dict[str, Any]],
        start_ns: int,
        before: Meter,
        after: Meter,
        rate: float,
        seconds: float,
        sent: int,
        expected: int,
    ) -> dict[str, Any]:
        messages, replies, stream = Tally(), Tally(), StreamTally()
        for report in reports:
            messages.merge(report["message"])
            replies.merge(report["reply"])
            stream.merge(report["stream"])
        window = max((max(messages.last_ns, replies.last_ns) - start_ns) / 1e9, seconds, 1e-3)
        delivered = messages.unique
        # Bot replies are deliveries too: the servers carry them to the room like any message.
        deliveries = delivered + replies.unique
        server, redis = after.nodes - before.nodes, after.redis - before.redis
        loadgen_cpu = [r["cpu_s"] for r in reports]
        measured = server + redis + (after.workers - before.workers) + sum(loadgen_cpu)
        other = after.machine - before.machine - measured
        figures: dict[str, Any] = {
            "rate": rate,
            "seconds": seconds,
            "sent": sent,
            "expected": expected,
            "delivered": delivered,
            "lost": max(expected - delivered, 0),
            "duplicated": messages.duplicated,
            "stale": messages.stale,
            "deliveries_per_s": round(deliveries / window, 1),
            **messages.latency.summary_ms(),
            "server_cpu_s": round(server, 3),
            "server_cpu_pct": round(server / window * 100, 1),
            "server_cpu_us_per_delivery": _per(server, deliveries, 1e6),
            "redis_cpu_us_per_delivery": _per(redis, deliveries, 1e6),
            "redis_cpu_us_per_message": _per(redis, sent, 1e6),
            "loadgen_cpu_pct": round(sum(loadgen_cpu) / window * 100, 1),
            "loadgen_cpu_pct_max": round(max(loadgen_cpu) / window * 100, 1),
            "other_cpu_pct": round(max(other, 0) / window * 100, 1),
            # How near each part was to its limit: a node, Redis and a load generator each run on one thread.
            "node_cpu_pct": [
                round((a - b) / window * 100, 1) for a, b in zip(after.per_node, before.per_node, strict=True)
            ],
            "redis_cpu_pct": round(redis / window * 100, 1),
            "loadgen_cpu_pct_of_cores": round(sum(loadgen_cpu) / window / min(len(loadgen_cpu), CORES) * 100, 1),
            "machine_cpu_pct": round((after.machine - before.machine) / window / CORES * 100, 1),
            "disconnected": sum(r["disconnected"] for r in reports),
            "frames_per_delivery": _per(sum(r["frames"] for r in reports), deliveries),
        }
        if self.topology.workers:
            figures.update(
                replies=replies.unique,
                replies_lost=max(sent - replies.unique, 0),
                replies_duplicated=replies.duplicated,
                replies_wrong=stream.wrong_text,
                worker_cpu_us_per_reply=_per(after.workers - before.workers, replies.unique, 1e6),
                reply_p50_ms=replies.latency.summary_ms()["p50_ms"],
                reply_p99_ms=replies.latency.summary_ms()["p99_ms"],
                reply_max_ms=replies.latency.summary_ms()["max_ms"],
            )
            if stream.deltas:
                figures.update(_stream_figures(stream, replies.unique, server, redis))
        return figures

    async def disconnect(self) -> None:
        await asyncio.gather(*(lg.call("disconnect") for lg in self.loadgens))
        self.placed.clear()
        self.connections = 0
