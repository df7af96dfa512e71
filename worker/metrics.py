"""Prometheus metrics of the workers of one process, on a registry passed in (no module-level metrics).

Several workers may share one :class:`WorkerMetrics` (the gateway runs its workers in-process):
counters add up, and the gauges sum (or, for ages, take the maximum of) what each worker reports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("done", "failed", "duplicate", "abandoned")  # the ``outcome`` label's values
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class WorkerLoad:
    """What one worker reports for the gauges; updated by the worker, read at scrape time."""

    bots: int = 0
    in_flight: int = 0
    queue_depth: int = 0
    oldest_age: float = 0.0


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    requests: Counter
    duration: Histogram
    dead_letters: Counter
    attempts_failed: Counter
    loads: list[WorkerLoad] = field(default_factory=list)
    # the (count, duration) series of each (kind, outcome), looked up once rather than per request
    _series: dict[tuple[str, str], tuple[Counter, Histogram]] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry if registry is not None else CollectorRegistry()
        metrics = cls(
            registry=registry,
            requests=Counter(
                "chat_worker_requests_total",
                "Requests finished, by bot kind and outcome",
                ["kind", "outcome"],
                registry=registry,
            ),
            duration=Histogram(
                "chat_worker_request_duration_seconds",
                "Time from taking a request to finishing it",
                ["kind", "outcome"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            dead_letters=Counter(
                "chat_worker_dead_letters_total", "Requests moved to a dead-letter stream", registry=registry
            ),
            attempts_failed=Counter(
                "chat_worker_failed_attempts_total", "Attempts that raised, retried or not", ["kind"], registry=registry
            ),
        )
        metrics._gauge(
            "chat_worker_queue_depth", "Unanswered requests of the bots served", lambda load: load.queue_depth
        )
        metrics._gauge(
            "chat_worker_oldest_request_age_seconds",
            "Age of the oldest unanswered request of the bots served",
            lambda load: load.oldest_age,
            combine=max,
        )
        metrics._gauge("chat_worker_bots", "Bots served (leases held)", lambda load: load.bots)
        metrics._gauge("chat_worker_in_flight", "Requests being handled", lambda load: load.in_flight)
        return metrics

    def _gauge(
        self,
        name: str,
        help_text: str,
        read: Callable[[WorkerLoad], float],
        combine: Callable[[list[float]], float] = sum,
    ) -> None:
        gauge = Gauge(name, help_text, registry=self.registry)
        gauge.set_function(lambda: combine([read(load) for load in self.loads] or [0.0]))

    def attach(self) -> WorkerLoad:
        """A load record for one more worker."""
        load = WorkerLoad()
        self.loads.append(load)
        return load

    def detach(self, load: WorkerLoad) -> None:
        if load in self.loads:
            self.loads.remove(load)

    def finished(self, kind: str, outcome: str, seconds: float) -> None:
        series = self._series.get((kind, outcome))
        if series is None:
            series = self._series[kind, outcome] = (
                self.requests.labels(kind, outcome),
                self.duration.labels(kind, outcome),
            )
        series[0].inc()
        series[1].observe(seconds)
