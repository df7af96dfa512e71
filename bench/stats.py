"""Exact delivery accounting and latency histograms, cheap enough to run per received frame.

Every benchmark message carries a marker ``#step:sender:seq:sent_ns#`` in its text. A receiver
remembers which (sender, seq) pairs it has seen in one byte per sequence number, which makes
duplicates and losses exact, and drops the latency into a log-bucketed histogram (1 % wide
buckets) that merges across processes by adding counts.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

_PER_E = 1 / math.log(1.01)  # buckets per factor e: each bucket is 1 % wide


def marker(step: int, sender: int, seq: int) -> str:
    """The text a benchmark message carries; its send time is taken now."""
    return f"#{step}:{sender}:{seq}:{time.monotonic_ns()}#"


def parse_marker(text: str) -> tuple[int, int, int, int] | None:
    """(step, sender, seq, sent_ns) from a message text, wherever the marker sits in it; None if absent."""
    parts = text.split("#", 2)
    if len(parts) < 3:
        return None
    fields = parts[1].split(":")
    if len(fields) != 4:
        return None
    try:
        return int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])
    except ValueError:
        return None


@dataclass
class Histogram:
    """Latency counts in 1 %-wide buckets of microseconds; the max is exact."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_us: float = 0.0

    def record(self, us: float) -> None:
        index = int(math.log(us) * _PER_E) if us > 1 else 0
        self.counts[index] = self.counts.get(index, 0) + 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for index, count in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + count
        self.total += other.total
        self.max_us = max(self.max_us, other.max_us)

    def percentile(self, fraction: float) -> float:
        """Microseconds below which ``fraction`` of the samples fall (the bucket's upper edge); 0 if empty."""
        if not self.total:
            return 0.0
        wanted, seen = fraction * self.total, 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= wanted:
                return min(math.exp((index + 1) / _PER_E), self.max_us)
        return self.max_us

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50_ms": round(self.percentile(0.50) / 1000, 3),
            "p99_ms": round(self.percentile(0.99) / 1000, 3),
            "max_ms": round(self.max_us / 1000, 3),
        }


@dataclass
class Tally:
    """What one class of deliveries (room messages, or bot replies) came to in one step."""

    unique: int = 0
    duplicated: int = 0
    stale: int = 0  # arrived during this step but belong to an earlier one
    last_ns: int = 0  # when the latest delivery arrived
    latency: Histogram = field(default_factory=Histogram)

    def merge(self, other: Tally) -> None:
        self.unique += other.unique
        self.duplicated += other.duplicated
        self.stale += other.stale
        self.last_ns = max(self.last_ns, other.last_ns)
        self.latency.merge(other.latency)


@dataclass
class StreamTally:
    """What the streamed bot replies of one step came to: their deltas, and whether each added up.

    A client keeps, per reply, the text its deltas spelled so far (see docs/protocol.md, "Streamed
    replies"); the final message must equal it, and the sent text.
    """

    deltas: int = 0  # delta frames received
    snapshots: int = 0  # stream frames (the text so far on join, or a new attempt starting again)
    gaps: int = 0  # deltas that skipped a seq
    repeats: int = 0  # deltas of a seq (or an attempt) the client had already passed
    broken: int = 0  # final messages whose text is not what the deltas spelled
    unstreamed: int = 0  # final bot messages with no delta before them
    wrong_text: int = 0  # bot replies whose text is not the text that was sent
    first_delta: Histogram = field(default_factory=Histogram)  # from the send to the reply's first delta

    def merge(self, other: StreamTally) -> None:
        self.deltas += other.deltas
        self.snapshots += other.snapshots
        self.gaps += other.gaps
        self.repeats += other.repeats
        self.broken += other.broken
        self.unstreamed += other.unstreamed
        self.wrong_text += other.wrong_text
        self.first_delta.merge(other.first_delta)


class Seen:
    """One receiving connection's record of which (sender, seq) it got in the current step."""

    __slots__ = ("by_sender",)

    def __init__(self) -> None:
        self.by_sender: dict[int, bytearray] = {}

    def add(self, sender: int, seq: int) -> bool:
        """Record a delivery; False if this connection had it already."""
        bits = self.by_sender.get(sender)
        if bits is None:
            bits = self.by_sender[sender] = bytearray(max(1024, seq + 1))
        elif seq >= len(bits):
            bits.extend(bytes(max(seq + 1 - len(bits), len(bits))))
        if bits[seq]:
            return False
        bits[seq] = 1
        return True


def count(tally: Tally, seen: Seen, step: int, text: str) -> None:
    """Account one received message text into ``tally`` for the current ``step``."""
    parsed = parse_marker(text)
    if parsed is None:
        return
    now = time.monotonic_ns()
    got_step, sender, seq, sent_ns = parsed
    if got_step != step:
        tally.stale += 1
        return
    if not seen.add(sender, seq):
        tally.duplicated += 1
        return
    tally.unique += 1
    tally.last_ns = now
    tally.latency.record((now - sent_ns) / 1000)
