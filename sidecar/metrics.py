"""The sidecar's Prometheus series: its own, prefixed `llmroute_`, and the OpenTelemetry GenAI client metrics
in Prometheus form (`gen_ai_client_*`, one observation per backend attempt). Labels carry names, never keys
or prompts."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmroute.sidecar.genai import DURATION_BUCKETS, TOKEN_BUCKETS

M = TypeVar("M", bound=MetricWrapperBase)
_le: Callable[[float], str] = floatToGoString
"""A bucket bound as prometheus_client writes it in `le` (0.01, 6.7108864e+07, +Inf); typed here, untyped there."""

# Buckets for LLM calls: from a cached 20 ms answer to a 2-minute batch completion.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)


class LoopHistogram(Collector):
    """A histogram observed from one thread (the event loop's): an observation is a bisect and two additions,
    where prometheus_client's takes two locks and walks the buckets (about seven times the CPU). For the
    series observed once per backend attempt."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(float(b) for b in buckets)
        self._series: dict[tuple[str, ...], LoopSeries] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopSeries:
        """The series of these label values (created at first use)."""
        series = self._series.get(values)
        if series is None:
            series = self._series[values] = LoopSeries(self._bounds)
        return series

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        bounds = [*map(_le, self._bounds), _le(math.inf)]
        for values, series in self._series.items():
            cumulative, total = [], 0
            for bound, count in zip(bounds, series.counts, strict=True):
                total += count
                cumulative.append((bound, float(total)))
            family.add_metric(values, cumulative, series.sum)
        yield family


class LoopSeries:
    """One labelled series of a LoopHistogram: a count per bucket (the last one for +Inf) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self._bounds, value)] += 1  # a value equal to a bound counts under it (le)
        self.sum += value


class GenAISeries:
    """The GenAI client metrics' series of one (operation, provider, request model), looked up once per
    attempt so that its verdict observes them without another label lookup."""

    __slots__ = ("_duration", "_labels", "_ok", "input", "output", "ttfc")

    def __init__(self, metrics: SidecarMetrics, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._duration = metrics.genai_duration
        self._ok = metrics.genai_duration.labels(*labels, "")
        self.input = metrics.genai_tokens.labels(*labels, "input")
        self.output = metrics.genai_tokens.labels(*labels, "output")
        self.ttfc = metrics.genai_ttfc.labels(*labels)

    def answered(self, seconds: float, input_tokens: int, output_tokens: int) -> None:
        """An attempt answered after `seconds` (a stream: at its end), with this usage."""
        self._ok.observe(seconds)
        self.input.observe(input_tokens)
        self.output.observe(output_tokens)

    def failed(self, seconds: float, error_type: str) -> None:
        """An attempt failed after `seconds` with `error_type` (the failure kind)."""
        self._duration.labels(*self._labels, error_type).observe(seconds)


class SidecarMetrics:
    """All series of one sidecar, on its own registry so several sidecars can live in one process (tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._genai: dict[tuple[str, str, str], GenAISeries] = {}
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
            "Requests the retry budget refused a fail-over, hedge or deadline rescue, once each (it may have gone"
            " out later, once the budget allowed it).",
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
        genai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]
        self.genai_duration = LoopHistogram(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration: one backend attempt, to the end of its answer (error_type set when it failed).",
            [*genai, "error_type"],
            DURATION_BUCKETS,
            r,
        )
        self.genai_tokens = LoopHistogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used, per answered backend attempt.",
            [*genai, "gen_ai_token_type"],
            TOKEN_BUCKETS,
            r,
        )
        self.genai_ttfc = LoopHistogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Streams: time from sending a backend attempt to its first chunk.",
            genai,
            DURATION_BUCKETS,
            r,
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

    def genai(self, operation: str, provider: str, model: str) -> GenAISeries:
        """The GenAI series of an attempt (`gen_ai_operation_name`, `gen_ai_provider_name`,
        `gen_ai_request_model`), created at first use."""
        labels = (operation, provider, model)
        series = self._genai.get(labels)
        if series is None:
            series = self._genai[labels] = GenAISeries(self, labels)
        return series

    def set_table_version(self, version: str) -> None:
        """Show only the current version in llmroute_routing_table_info."""
        self.table_info.clear()
        self.table_info.labels(version).set(1)
