"""Prometheus metrics, on a registry of our own (no module-level state).

Served by the admin listener at ``/metrics``. With ``server.workers > 1`` each worker
keeps its own numbers and a scrape reaches one of them; the ``pid`` in ``/healthz``
tells them apart.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# The check answers in well under a millisecond from memory; registrations and store
# reads take milliseconds.
CHECK_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
SESSIONS_COUNT_SECONDS = 15.0
PROPAGATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class CheckStats:
    """What the check counts on every request, in plain Python numbers.

    prometheus_client's Counter and Histogram take a lock on every update; on a path that
    answers in tens of microseconds that is a visible share. These are read (and turned
    into Prometheus families) only when /metrics is scraped.
    """

    def __init__(self, buckets: tuple[float, ...] = CHECK_BUCKETS) -> None:
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.seconds_sum = 0.0
        self.allowed = 0
        self.public = 0  # allowed by a public route, credentials not looked at
        self.anonymous = 0  # an optional route without credentials
        self.denied: dict[str, int] = {}
        self.overloaded = 0

    def observe(self, seconds: float) -> None:
        self.bucket_counts[bisect_left(self.buckets, seconds)] += 1
        self.seconds_sum += seconds

    def deny(self, reason: str) -> None:
        self.denied[reason] = self.denied.get(reason, 0) + 1


class _CheckCollector(Collector):
    def __init__(self, stats: CheckStats) -> None:
        self._stats = stats

    def collect(self) -> list[Metric]:
        st = self._stats
        decisions = CounterMetricFamily(
            "sidecar_check_decisions", "Gateway check answers, by result and reason.", labels=["result", "reason"]
        )
        decisions.add_metric(["allow", "active"], st.allowed)
        decisions.add_metric(["allow", "public"], st.public)
        decisions.add_metric(["allow", "anonymous"], st.anonymous)
        for reason, count in sorted(st.denied.items()):
            decisions.add_metric(["deny", reason], count)
        cumulative, buckets = 0, []
        for bound, count in zip((*st.buckets, float("inf")), st.bucket_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency = HistogramMetricFamily(
            "sidecar_check_duration_seconds", "Time to answer a gateway check.",
            buckets=buckets, sum_value=st.seconds_sum,
        )
        overload = CounterMetricFamily(
            "sidecar_check_overload_rejections", "Checks refused with 503 because too many were in flight.",
            value=st.overloaded,
        )
        return [decisions, latency, overload]


class _Live(Collector):
    """Gauges read at scrape time from the running services."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> list[Metric]:
        values = self._read()
        out: list[Metric] = []
        if "verified_cache_hits" in values:
            lookups = CounterMetricFamily(
                "sidecar_verified_cache_lookups",
                "Lookups of verified claims by token, by outcome (a hit skips the signature check).",
                labels=["outcome"],
            )
            lookups.add_metric(["hit"], values["verified_cache_hits"])
            lookups.add_metric(["miss"], values["verified_cache_misses"])
            out.append(lookups)
        if "redis_messages_received" in values:
            out.append(
                CounterMetricFamily(
                    "sidecar_redis_messages_received",
                    "Well-formed messages received on the revocation channel (each one a hint "
                    "that triggers a coalesced catch-up from the store).",
                    value=values["redis_messages_received"],
                )
            )
        return out + [
            GaugeMetricFamily(f"sidecar_{name}", doc, value=values[name])
            for name, doc in (
                ("session_states_in_memory", "Session states held in memory."),
                ("verified_tokens_in_memory", "Verified tokens held in the claims cache."),
                ("revision_applied", "Highest store revision this process has applied."),
                ("revocations_fresh", "1 while memory is known current within max_staleness_seconds."),
                ("redis_connected", "1 while subscribed to the revocation channel (0 without Redis)."),
            )
            if name in values
        ]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.check = CheckStats()
        self.registry.register(_CheckCollector(self.check))
        self.propagation_seconds = Histogram(
            "sidecar_revocation_propagation_seconds",
            "From a revocation committed by another process to this process applying it "
            "(wall clocks of two hosts: includes their skew).",
            ["via"],
            buckets=PROPAGATION_BUCKETS,
            registry=self.registry,
        )
        self.revocations = Counter(
            "sidecar_revocations",
            "Revocations made by this process, by API and kind.",
            ["api", "kind"],
            registry=self.registry,
        )
        self.sessions_revoked = Counter(
            "sidecar_sessions_revoked",
            "Sessions revoked by this process, by reason (user, others, admin, admin_user, idle, "
            "lifetime, limit, oauth2, logout).",
            ["reason"],
            registry=self.registry,
        )
        self.sessions_active = Gauge(
            "sidecar_sessions_active",
            "Active (unrevoked, unexpired) sessions in the store, counted every SESSIONS_COUNT_SECONDS.",
            registry=self.registry,
        )
        self.webhook_outbox = Gauge(
            "sidecar_webhook_outbox",
            "Undelivered webhook outbox rows in the store, by state: pending (to be tried) and dead "
            "(every attempt failed: [[webhooks]].max_attempts), counted every SESSIONS_COUNT_SECONDS.",
            ["state"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "sidecar_api_rate_limited",
            "Sessions API requests refused with 429.",
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        self.registry.register(_Live(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)
