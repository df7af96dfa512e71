"""Prometheus metrics of one gateway node, on a registry owned by the app (no globals)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.hot_counters import HotCounter, HotCounters

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections = Gauge("chat_connections", "WebSocket connections open now", registry=r)
        self.connections_opened = Counter("chat_connections_opened", "WebSocket connections accepted", registry=r)
        self.connections_closed = Counter(
            "chat_connections_closed", "WebSocket connections closed, by reason", ["reason"], registry=r
        )
        hot = HotCounters(r)  # bumped per frame: plain integers, read when scraped
        self.frames_received = hot.counter("chat_frames_received", "Client frames received, by type", ("type",))
        self.frames_sent = hot.counter("chat_frames_sent", "Frames sent to clients, by type", ("type",))
        self.messages_published = hot.counter("chat_messages_published", "User messages stored and published")
        self.deliveries = hot.counter("chat_deliveries", "Room events written to local connections")
        self.fanout_duration = Histogram(
            "chat_fanout_duration_seconds",
            "Time to write one room event to every local member",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.message_latency = Histogram(
            "chat_message_latency_seconds",
            "From a message's store to its delivery on this node",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.redis_duration = Histogram(
            "chat_redis_command_duration_seconds",
            "Round trip of a Redis command batch",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.redis_errors = Counter("chat_redis_errors", "Redis commands that failed", registry=r)
        self.subscriptions = Gauge("chat_subscriptions", "Room subscriptions this node holds", registry=r)
        self.auth_failures = Counter("chat_auth_failures", "Rejected tokens, by reason", ["reason"], registry=r)
        self.slow_consumers = Counter("chat_slow_consumers", "Clients closed for falling behind", registry=r)
        self.rate_limited = Counter("chat_rate_limited", "Frames and requests refused by a rate limit", registry=r)
        self.ready = Gauge("chat_ready", "1 when this node accepts clients", registry=r)
        self.pubsub_bad_packets = Counter(
            "chat_pubsub_bad_packets",
            "Pub/sub messages dropped because they could not be read or handled, by channel kind and reason",
            ["channel", "reason"],  # channel: room, control, probe; reason: malformed, unknown, failed
            registry=r,
        )
        self.pubsub_resets = Counter(
            "chat_pubsub_resets",
            "Times the pub/sub link was rebuilt (reconnect, restarted read loop, moved slots) and rooms refilled",
            registry=r,
        )
        self._sent: dict[str, HotCounter] = {}

    # -- hooks called from the hot paths: one call per event or per Redis round trip, never per member
    def delivered(self, frame: bytes, count: int, message_id: str, seconds: float) -> None:
        kind = frame_kind(frame)
        sent = self._sent.get(kind)
        if sent is None:
            sent = self._sent[kind] = self.frames_sent.labels(kind)
        sent.inc(count)
        self.deliveries.inc(count)
        self.fanout_duration.observe(seconds)
        if message_id:
            self.message_latency.observe(max(0.0, time.time() - int(message_id.partition("-")[0]) / 1000))

    def redis_round_trip(self, seconds: float, commands: int, failed: int) -> None:
        self.redis_duration.observe(seconds)
        if failed:
            self.redis_errors.inc(failed)


KNOWN_KINDS = frozenset(
    {"message", "typing", "presence", "status", "delta", "bot_status", "joined", "ack", "error", "reconnect"}
)


def frame_kind(frame: bytes) -> str:
    """The ``type`` of a server frame, read from its first bytes (frames start with ``{"type":"``)."""
    end = frame.find(b'"', 9)
    kind = frame[9:end].decode(errors="replace") if end > 9 else ""
    return kind if kind in KNOWN_KINDS else "other"
