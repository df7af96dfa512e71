"""Counters bumped on every frame, kept as plain integers and read only when /metrics is scraped.

prometheus_client's own counters take a lock on every ``inc`` (they are thread-safe); a gateway
node is one event loop, so the counters of its hot paths (frames in and out, deliveries,
messages) are plain integers here, exported in the same Prometheus format by a collector.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class HotCounter:
    """One counter, or one labelled child of one (``labels`` gives it)."""

    __slots__ = ("_children", "documentation", "label_names", "name", "value")

    def __init__(self, name: str, documentation: str, label_names: tuple[str, ...] = ()) -> None:
        self.name = name  # without the _total suffix, as prometheus_client names counters
        self.documentation = documentation
        self.label_names = label_names
        self.value = 0.0
        self._children: dict[tuple[str, ...], HotCounter] = {}

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def labels(self, *values: str) -> HotCounter:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = HotCounter(self.name, self.documentation)
        return child

    def family(self) -> CounterMetricFamily:
        if not self.label_names:
            return CounterMetricFamily(self.name, self.documentation, value=self.value)
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.label_names))
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        return family


class HotCounters(Collector):
    """The collector of a node's hot counters, registered on its registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counters: list[HotCounter] = []
        registry.register(self)

    def counter(self, name: str, documentation: str, label_names: tuple[str, ...] = ()) -> HotCounter:
        counter = HotCounter(name, documentation, label_names)
        self._counters.append(counter)
        return counter

    def collect(self) -> Iterator[CounterMetricFamily]:
        for counter in self._counters:
            yield counter.family()
