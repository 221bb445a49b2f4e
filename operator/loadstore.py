"""Merge the sidecars' load reports into per-backend health for the LLMRoute status.

Reports are added into 5-second slots per (namespace, route, backend); health is read from the slots
of the last minute. Fixed-bucket histograms add up across sidecars, so p50/p95 are of all traffic.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llmroute.v1 import histogram, load_pb2

WINDOW = 60.0
SLOT = 5.0
# Failures that say something about the backend (4xx is the request's fault).
BACKEND_FAULTS = ("connect_failure", "reset", "timeout", "server_error", "rate_limited", "auth")
UNHEALTHY_FAULT_RATE = 0.5


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """One backend's last minute, merged over every sidecar of the namespace that reported it."""

    name: str
    healthy: bool
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p95_ms: float
    error_rate: float
    requests_per_minute: float
    spend_usd_per_hour: float


@dataclass(slots=True)
class _Slot:
    start: float
    requests: int = 0
    failures: int = 0
    faults: int = 0
    spend_usd: float = 0.0
    latency: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)
    ttft: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)

    def add(self, load: load_pb2.BackendLoad) -> None:
        faults = sum(getattr(load.failures, kind) for kind in BACKEND_FAULTS)
        self.requests += load.requests
        self.faults += faults
        self.failures += faults + load.failures.client_error
        self.spend_usd += load.spend_usd
        histogram.merge(self.latency, load.latency.counts)
        histogram.merge(self.ttft, load.ttft.counts)


class LoadStore:
    """The last minute of load reports of every namespace."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[tuple[str, str, str], deque[_Slot]] = {}
        self._first_report: dict[str, float] = {}

    def add(self, namespace: str, report: load_pb2.LoadReport) -> None:
        """Count one sidecar's report under the namespace its token names."""
        now = self._clock()
        self._first_report.setdefault(namespace, now - report.interval_seconds)
        start = now - now % SLOT
        for load in report.backends:
            slots = self._slots.setdefault((namespace, load.route, load.backend), deque())
            self._prune(slots, now)
            if not slots or slots[-1].start != start:
                slots.append(_Slot(start))
            slots[-1].add(load)

    def health(self, namespace: str, route: str, backends: Sequence[str]) -> list[BackendHealth]:
        """Health of each named backend of the route, in the order given; zeros when nothing was reported."""
        now = self._clock()
        covered = min(WINDOW, max(SLOT, now - self._first_report.get(namespace, now)))
        out = []
        for name in backends:
            total = _Slot(0.0)
            slots = self._slots.get((namespace, route, name), deque())
            self._prune(slots, now)
            for slot in slots:
                total.requests += slot.requests
                total.failures += slot.failures
                total.faults += slot.faults
                total.spend_usd += slot.spend_usd
                histogram.merge(total.latency, slot.latency)
                histogram.merge(total.ttft, slot.ttft)
            requests = max(total.requests, 1)
            out.append(
                BackendHealth(
                    name=name,
                    healthy=total.faults / requests < UNHEALTHY_FAULT_RATE,
                    latency_p50_ms=round(histogram.quantile(total.latency, 0.50), 1),
                    latency_p95_ms=round(histogram.quantile(total.latency, 0.95), 1),
                    ttft_p95_ms=round(histogram.quantile(total.ttft, 0.95), 1),
                    error_rate=round(total.failures / requests, 4),
                    requests_per_minute=round(total.requests * 60.0 / covered, 2),
                    spend_usd_per_hour=round(total.spend_usd * 3600.0 / covered, 6),
                )
            )
        return out

    @staticmethod
    def _prune(slots: deque[_Slot], now: float) -> None:
        while slots and slots[0].start + SLOT <= now - WINDOW:
            slots.popleft()
