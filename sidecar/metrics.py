"""The sidecar's Prometheus series, prefixed `llmroute_`. Labels carry names, never keys or prompts."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

# Buckets for LLM calls: from a cached 20 ms answer to a 2-minute batch completion.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class SidecarMetrics:
    """All series of one sidecar, on its own registry so several sidecars can live in one process (tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.request_duration = Histogram(
            "llmroute_request_duration_seconds",
            "Time from the app's request to the end of the response, by the backend that answered and the inbound API.",
            ["route", "backend", "priority", "outcome", "api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "llmroute_time_to_first_token_seconds",
            "Streams: time from the app's request to the first content chunk sent to it.",
            ["route", "backend", "priority", "api"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "llmroute_overhead_seconds",
            "Time a request spent in the sidecar itself, outside backend calls.",
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.attempts = Counter(
            "llmroute_upstream_attempts_total",
            "Calls to backends (first tries, retries, hedges, shadow probes) by outcome.",
            ["route", "backend", "outcome"],
            registry=r,
        )
        self.tokens = Counter(
            "llmroute_tokens_total", "Tokens reported by backends.", ["route", "backend", "kind"], registry=r
        )
        self.cost = Counter(
            "llmroute_cost_usd_total",
            "Spend in USD from reported usage and the backend's price.",
            ["route", "backend"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llmroute_fallbacks_total",
            "Requests answered by another backend than the first one tried.",
            ["route"],
            registry=r,
        )
        self.retries = Counter(
            "llmroute_retries_total",
            "Attempts after the first, by why the previous one failed.",
            ["route", "reason"],
            registry=r,
        )
        self.retries_refused = Counter(
            "llmroute_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.",
            ["route"],
            registry=r,
        )
        self.hedges = Counter(
            "llmroute_hedges_total", "Hedged requests sent, by whether the hedge won.", ["route", "result"], registry=r
        )
        self.ejections = Counter(
            "llmroute_ejections_total",
            "Backends ejected by outlier detection.",
            ["route", "backend", "reason"],
            registry=r,
        )
        self.passthrough = Counter(
            "llmroute_passthrough_requests_total",
            "Requests relayed to a passthrough upstream (route label `passthrough` elsewhere), by answer status.",
            ["family", "status"],
            registry=r,
        )
        self.in_flight = Gauge("llmroute_requests_in_flight", "App requests being served.", ["route"], registry=r)
        self.table_info = Gauge(
            "llmroute_routing_table_info",
            "The routing table in use (value 1), by version.",
            ["version"],
            registry=r,
        )
        self.continuations = Counter(
            "llmroute_stream_continuations_total",
            "Streams that broke off mid-answer and were continued on a prefill backend.",
            ["route"],
            registry=r,
        )
        self.skipped_events = Counter(
            "llmroute_stream_events_skipped_total",
            "Malformed events in backend streams, skipped while the stream went on.",
            ["route", "backend"],
            registry=r,
        )
        self.task_crashes = Counter(
            "llmroute_background_task_crashes_total",
            "Crashes of the sidecar's background loops (each is logged and the loop restarted).",
            ["task"],
            registry=r,
        )
        self.access_log_dropped = Counter(
            "llmroute_access_log_dropped_total",
            "Access-log lines dropped because stdout did not keep up (or failed).",
            registry=r,
        )
        self.policy_decisions = Counter(
            "llmroute_policy_decisions_total",
            "Requests an LLMPolicy limit did not fit, by what followed: rejected (429), downgraded, observed.",
            ["policy", "limit", "tier", "decision"],
            registry=r,
        )
        self.table_updates = Counter(
            "llmroute_routing_table_updates_total",
            "Routing tables received, by whether they were applied.",
            ["result"],
            registry=r,
        )

    def child(self, metric: M, *labels: str) -> M:
        """`metric.labels(*labels)`, cached: the request path asks for the same few series every time and
        prometheus_client's lookup (validation, a lock) costs more than the increment itself."""
        key = (id(metric), labels)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = metric.labels(*labels)
        return series

    def set_table_version(self, version: str) -> None:
        """Show only the current version in llmroute_routing_table_info."""
        self.table_info.clear()
        self.table_info.labels(version).set(1)
