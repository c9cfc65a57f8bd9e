"""Prometheus metrics of SPEC §9.1, registered once per process in the default registry.

Labels are bounded: never a session key, full subject, id or client string. Hot paths use
pre-labelled children (a `.labels()` lookup costs more than the increment) and bulk `inc(n)`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

USER_TYPES = ("user", "admin")
TOKEN_TYPES = ("company", "admin")
SUBJECT_TYPES = ("chats", "messages", "agents", "contacts", "other")
KEY_TYPES = ("session_lock", "chat_route", "message_route")

# (metric name without _total, label values, value)
CountSample = tuple[str, tuple[str, ...], float]

# Counters that hot paths keep as plain integers (a prometheus increment costs more than
# a token-cache hit); they are summed over their sources at scrape time.
SCRAPED_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dws_auth_success": ("Successful token validations", ("token_type",)),
    "dws_token_cache_hits": ("Token cache hits", ("token_type",)),
    "dws_token_cache_misses": ("Token cache misses", ("token_type",)),
    "dws_websocket_messages_dropped": ("Outbound frames discarded", ("reason",)),
    # Not in the Go service: how many frames a write carries (write delay, bursts).
    "dws_websocket_writes": ("Socket writes of queued frames (events, replies), each of every frame then queued for its socket", ()),
}


class ScrapedCounters(Collector):
    """Counter families read from registered sources when /metrics is scraped."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[CountSample]]] = []

    def collect(self) -> Iterator[Metric]:
        totals: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)
        for source in self.sources:
            for name, labels, value in source():
                totals[(name, labels)] += value
        for name, (doc, labelnames) in SCRAPED_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=list(labelnames))
            for (metric, labels), value in totals.items():
                if metric == name:
                    family.add_metric(list(labels), value)
            yield family


class Metrics:
    """All daisi-ws metrics. One instance per process (see `metrics()`)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        r = registry
        self.registry = r
        self.build_info = Gauge("dws_build_info", "Build information", ["version", "native"], registry=r)
        self.active_connections = Gauge("dws_active_connections", "Local WebSocket connections", registry=r)
        self.connections_total = Counter("dws_connections", "Successful WebSocket upgrades", registry=r)
        self.connection_duration = Histogram(
            "dws_connection_duration_seconds",
            "Lifetime of WebSocket connections",
            buckets=[0.1 * 2**k for k in range(15)],
            registry=r,
        )
        self.messages_received = Counter(
            "dws_messages_received", "Client messages received", ["message_type"], registry=r
        )
        self.messages_sent = Counter("dws_messages_sent", "Frames sent to clients", ["message_type"], registry=r)
        self.auth_failure = Counter(
            "dws_auth_failure", "Failed token validations", ["token_type", "reason"], registry=r
        )
        self.session_conflicts = Counter(
            "dws_session_conflicts", "Session takeovers begun", ["user_type"], registry=r
        )
        self.lock_attempts = Counter(
            "dws_session_lock_attempts", "Session lock SET attempts", ["user_type", "lock_type"], registry=r
        )
        self.lock_success = Counter(
            "dws_session_lock_success", "Session lock SET successes", ["user_type", "lock_type"], registry=r
        )
        self.lock_failure = Counter(
            "dws_session_lock_failure", "Session lock acquisition failures", ["user_type", "reason"], registry=r
        )
        self.renewal_attempts = Counter(
            "dws_session_lock_renewal_attempts", "Session lock renewals", ["user_type"], registry=r
        )
        self.renewal_success = Counter(
            "dws_session_lock_renewal_success", "Successful lock renewals", ["user_type"], registry=r
        )
        self.renewal_failure = Counter(
            "dws_session_lock_renewal_failure", "Failed lock renewals", ["user_type", "reason"], registry=r
        )
        self.nats_received = Counter(
            "dws_nats_messages_received", "Events received from NATS", ["subject_type"], registry=r
        )
        self.events_dropped = Counter("dws_events_dropped", "Events dropped before dispatch", ["reason"], registry=r)
        self.buffer_used = Gauge("dws_websocket_buffer_used_count", "Queued outbound frames", registry=r)
        self.buffer_capacity = Gauge(
            "dws_websocket_buffer_capacity_count", "Outbound frame capacity", registry=r
        )
        self.slow_clients = Counter(
            "dws_websocket_slow_clients_disconnected", "Sockets closed 1008 Slow consumer", registry=r
        )
        self.scraped = ScrapedCounters()
        r.register(self.scraped)
        ttl_buckets = [float(2**k) for k in range(16)]
        self.ttl_calculated = Histogram(
            "dws_redis_ttl_calculated_seconds", "Adaptive TTLs", ["key_type"], buckets=ttl_buckets, registry=r
        )
        self.activity_age = Histogram(
            "dws_redis_activity_age_seconds", "Age of activity keys", ["key_type"], buckets=ttl_buckets, registry=r
        )
        self.ttl_decision = Counter(
            "dws_redis_ttl_decision", "Adaptive TTL decisions", ["key_type", "decision"], registry=r
        )
        self.forward_sent = Counter("dws_forward_sent", "Forwards sent", ["subject_type"], registry=r)
        self.forward_received = Counter("dws_forward_received", "Forwards received", ["subject_type"], registry=r)
        self.forward_failures = Counter("dws_forward_failures", "Failed forwards", ["reason"], registry=r)
        self.forward_naks = Counter("dws_forward_naks", "JetStream NAKs", ["reason"], registry=r)

        # Pre-labelled children for per-event paths.
        self.sent_event = self.messages_sent.labels("event")
        self.sent_ready = self.messages_sent.labels("ready")
        self.sent_error = self.messages_sent.labels("error")
        self.sent_ack = self.messages_sent.labels("ack")
        self.received_by_type = {
            t: self.messages_received.labels(t) for t in ("select_chat", "ready", "invalid_json", "unknown")
        }
        self.nats_received_by_type = {t: self.nats_received.labels(t) for t in SUBJECT_TYPES}
        self.forward_sent_by_type = {t: self.forward_sent.labels(t) for t in SUBJECT_TYPES}
        self.forward_received_by_type = {t: self.forward_received.labels(t) for t in SUBJECT_TYPES}

    def add_count_source(self, source: Callable[[], Iterable[CountSample]]) -> None:
        """Register a callable yielding counts of SCRAPED_COUNTERS (kept for the process)."""
        self.scraped.sources.append(source)

    def bind_buffer_gauges(self, used: Callable[[], float], capacity: Callable[[], float]) -> None:
        """Buffer gauges are computed at scrape time from the live sockets."""
        self.buffer_used.set_function(used)
        self.buffer_capacity.set_function(capacity)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST

_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process-wide Metrics (prometheus_client's default registry allows one)."""
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics
