"""Prometheus metrics of one signaling app (own registry, so several apps can live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class SignalingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sockets = Gauge("voxa_signaling_sockets", "Open WebSockets.", registry=r)
        self.channel_members = Gauge(
            "voxa_signaling_channel_members", "Channel joins held by this replica's sockets.", registry=r
        )
        self.connects = Counter(
            "voxa_signaling_connects_total", "Socket upgrade attempts by result.", ["result"], registry=r
        )
        self.connections_refused = Counter(
            "voxa_signaling_connections_refused_total",
            "TCP connections refused by the per-address limits (open: too many open, rate: too many new).",
            ["reason"],
            registry=r,
        )
        self.joins = Counter("voxa_signaling_joins_total", "Channel joins by result.", ["result"], registry=r)
        self.messages = Counter("voxa_signaling_messages_total", "Frames received.", registry=r)
        self.errors = Counter(
            "voxa_signaling_errors_total", "Rejected input and failures by kind.", ["kind"], registry=r
        )
        self.closes = Counter(
            "voxa_signaling_closes_total", "Sockets closed by the server, by code.", ["code"], registry=r
        )
        self.redis_latency = Histogram(
            "voxa_signaling_store_latency_seconds",
            "Store round-trip time measured by the health probe.",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.store_ready = Gauge("voxa_signaling_store_ready", "1 while the store answers.", registry=r)
        self.push_sent = Counter(
            "voxa_signaling_push_sent_total",
            "Pushes a push service accepted, by kind and type (call_started, stop_ringing).",
            ["kind", "type"],
            registry=r,
        )
        self.push_failed = Counter(
            "voxa_signaling_push_failed_total",
            "Pushes given up, by kind and why (refused, gave_up, expired, store).",
            ["kind", "reason"],
            registry=r,
        )
        self.push_removed = Counter(
            "voxa_signaling_push_removed_total",
            "Registrations removed because their push service said they are gone, by kind.",
            ["kind"],
            registry=r,
        )
        self.push_retries = Counter(
            "voxa_signaling_push_retries_total", "Push tries scheduled again, by kind.", ["kind"], registry=r
        )
        self.push_dropped = Counter(
            "voxa_signaling_push_dropped_total", "Pushes dropped because the push queue was full.", registry=r
        )
