"""The mechanics shared by every scenario: connect clients, run one measured step, read the meters.

A step resets the load generators' counters, has the senders send at a rate for a while, waits for
the deliveries to drain (all expected ones arrived, or none for ``drain_idle`` seconds), and turns
the counters and the processes' CPU use over that window into figures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.loadgen import LoadGen, Member
from bench.procs import cpu_seconds, machine_busy_seconds, rss_bytes
from bench.stats import Tally
from bench.systems import Topology

DRAIN_CAP = 30.0  # seconds a step may wait for stragglers after its senders stop
CONNECT_CONCURRENCY = 64  # handshakes in flight per load-generator process


@dataclass(frozen=True)
class Meter:
    """CPU seconds used so far by each group of processes."""

    nodes: float
    redis: float
    workers: float
    machine: float  # every process on the machine, to see how much other work competed

    @classmethod
    def read(cls, topology: Topology) -> Meter:
        return cls(
            nodes=sum(cpu_seconds(p.pid) for p in topology.nodes),
            redis=cpu_seconds(topology.redis.pid),
            workers=sum(cpu_seconds(p.pid) for p in topology.workers),
            machine=machine_busy_seconds(),
        )


def _per(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
    return round(numerator * scale / denominator, 2) if denominator else None


class Drive:
    """One running system and the load generators pointed at it."""

    def __init__(self, topology: Topology, loadgens: list[LoadGen], wire: str, padding: int) -> None:
        self.topology = topology
        self.loadgens = loadgens
        self.wire = wire
        self.padding = padding
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

    async def connect(self, members: list[Member]) -> float:
        """Open and join every member's connection, spread over the load generators; return seconds taken."""
        started = time.monotonic()
        shares: list[list[Member]] = [[] for _ in self.loadgens]
        for member in members:
            number = member.index % len(self.loadgens)
            shares[number].append(member)
            self.placed[member.index] = number
        answers = await asyncio.gather(
            *(
                lg.call("connect", wire=self.wire, members=share, concurrency=CONNECT_CONCURRENCY, padding=self.padding)
                for lg, share in zip(self.loadgens, shares, strict=True)
                if share
            )
        )
        failed = sum(a["failed"] for a in answers)
        self.connections += sum(a["connected"] for a in answers)
        if failed:
            errors = [e for a in answers for e in a["errors"]][:3]
            raise RuntimeError(f"{failed} of {len(members)} connections failed, e.g. {errors}")
        return time.monotonic() - started

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
        messages, replies = Tally(), Tally()
        for report in reports:
            messages.merge(report["message"])
            replies.merge(report["reply"])
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
            "disconnected": sum(r["disconnected"] for r in reports),
            "frames_per_delivery": _per(sum(r["frames"] for r in reports), deliveries),
        }
        if self.topology.workers:
            figures.update(
                replies=replies.unique,
                replies_lost=max(sent - replies.unique, 0),
                replies_duplicated=replies.duplicated,
                worker_cpu_us_per_reply=_per(after.workers - before.workers, replies.unique, 1e6),
                reply_p50_ms=replies.latency.summary_ms()["p50_ms"],
                reply_p99_ms=replies.latency.summary_ms()["p99_ms"],
                reply_max_ms=replies.latency.summary_ms()["max_ms"],
            )
        return figures

    async def disconnect(self) -> None:
        await asyncio.gather(*(lg.call("disconnect") for lg in self.loadgens))
        self.placed.clear()
        self.connections = 0
