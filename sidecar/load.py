"""Per-backend request statistics between two load reports to the control plane.

finish() runs on every request, so it only bumps counters and bucket counts; the report message is
built once per interval by snapshot_and_reset().
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmroute.v1 import histogram, load_pb2

# Failure class (as the request path names it) -> field of llmroute.v1.Failures.
FAILURE_FIELDS = {
    "connect-failure": "connect_failure",
    "reset": "reset",
    "timeout": "timeout",
    "5xx": "server_error",
    "429": "rate_limited",
    "4xx": "client_error",
    "auth": "auth",
    "context-length": "client_error",  # the request is too long for this backend: not a health signal
}


@dataclass(slots=True)
class _Stats:
    in_flight: int = 0
    requests: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)
    latency_sum_ms: float = 0.0
    ttft: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)
    ttft_sum_ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0


class LoadRecorder:
    """Counts attempts per (route name, backend name) until the next report."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since = clock()
        self._stats: dict[tuple[str, str], _Stats] = {}

    def start(self, route: str, backend: str) -> None:
        """An attempt to `backend` of route `route` (the LLMRoute's name) was sent."""
        key = (route, backend)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _Stats()
        stats.in_flight += 1

    def finish(
        self,
        route: str,
        backend: str,
        *,
        failure: str | None,
        latency: float,
        ttft: float | None,
        tokens_in: int,
        tokens_out: int,
        cost_usd: float,
    ) -> None:
        """The attempt ended: `failure` is None or one of FAILURE_FIELDS' keys; times in seconds."""
        key = (route, backend)
        stats = self._stats.get(key)
        if stats is None:
            stats = self._stats[key] = _Stats(in_flight=1)
        stats.in_flight -= 1
        stats.requests += 1
        if failure is None:
            stats.successes += 1
        else:
            kind = FAILURE_FIELDS[failure]
            stats.failures[kind] = stats.failures.get(kind, 0) + 1
        ms = latency * 1000.0
        stats.latency[histogram.bucket(ms)] += 1
        stats.latency_sum_ms += ms
        if ttft is not None:
            ms = ttft * 1000.0
            stats.ttft[histogram.bucket(ms)] += 1
            stats.ttft_sum_ms += ms
        stats.tokens_in += tokens_in
        stats.tokens_out += tokens_out
        stats.cost_usd += cost_usd

    def cancel(self, route: str, backend: str) -> None:
        """The attempt was abandoned (a hedge that lost): it neither succeeded nor failed."""
        stats = self._stats.get((route, backend))
        if stats is not None and stats.in_flight > 0:
            stats.in_flight -= 1

    def snapshot_and_reset(self) -> load_pb2.LoadReport:
        """A report of everything since the last call; counters start again (in-flight counts carry over)."""
        now = self._clock()
        report = load_pb2.LoadReport(interval_seconds=now - self._since)
        self._since = now
        stats_by_key, self._stats = self._stats, {}
        for (route, backend), s in sorted(stats_by_key.items()):
            if s.in_flight:
                self._stats[(route, backend)] = _Stats(in_flight=s.in_flight)
            if not s.requests and not s.in_flight:
                continue
            report.backends.append(
                load_pb2.BackendLoad(
                    route=route,
                    backend=backend,
                    requests=s.requests,
                    successes=s.successes,
                    failures=load_pb2.Failures(**s.failures),
                    in_flight=s.in_flight,
                    latency=load_pb2.Histogram(counts=_trimmed(s.latency), sum_ms=s.latency_sum_ms),
                    ttft=load_pb2.Histogram(counts=_trimmed(s.ttft), sum_ms=s.ttft_sum_ms),
                    tokens_in=s.tokens_in,
                    tokens_out=s.tokens_out,
                    spend_usd=s.cost_usd,
                )
            )
        return report


def _trimmed(counts: list[int]) -> list[int]:
    """Counts without trailing empty buckets (the wire format allows leaving them out)."""
    end = len(counts)
    while end and not counts[end - 1]:
        end -= 1
    return counts[:end]
