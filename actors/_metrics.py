"""Prometheus metrics of one node, in a registry of its own (several nodes may share a process)."""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@attrs.define(eq=False)
class NodeMetrics:
    """The node's counters; actors update them, ``GET /metrics`` renders them."""

    registry: CollectorRegistry = attrs.field(factory=_registry)
    connections: Gauge = attrs.field(init=False)
    messages_in: Counter = attrs.field(init=False)
    messages_out: Counter = attrs.field(init=False)
    acks: Counter = attrs.field(init=False)
    nacks: Counter = attrs.field(init=False)
    errors: Counter = attrs.field(init=False)
    store_latency: Histogram = attrs.field(init=False)
    batch_size: Histogram = attrs.field(init=False)
    actor_restarts: Counter = attrs.field(init=False)
    notifications_pending: Gauge = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        reg = self.registry
        self.connections = Gauge(
            "messenger_connections", "Open client sessions (after hello).", registry=reg
        )
        self.messages_in = Counter(
            "messenger_messages_in", "Messages stored from client sends.", registry=reg
        )
        self.messages_out = Counter(
            "messenger_messages_out", "msg frames pushed to connections.", registry=reg
        )
        self.acks = Counter("messenger_acks", "ack frames sent.", registry=reg)
        self.nacks = Counter(
            "messenger_nacks", "nack frames sent, by code.", ["code"], registry=reg
        )
        self.errors = Counter(
            "messenger_errors", "error frames sent, by code.", ["code"], registry=reg
        )
        self.store_latency = Histogram(
            "messenger_store_seconds",
            "Latency of Store calls made by actors, by operation.",
            ["op"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "messenger_group_commit_batch",
            "Sends written by one group commit.",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.actor_restarts = Counter(
            "messenger_actor_restarts",
            "Actors that crashed and were restarted.",
            ["actor"],
            registry=reg,
        )
        self.notifications_pending = Gauge(
            "messenger_notification_jobs_pending",
            "Offline-notification jobs not yet handed to the sink.",
            registry=reg,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)
