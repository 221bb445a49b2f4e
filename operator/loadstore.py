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
class LoadTotals:
    """Load summed over some slots (and, on the leader, over replicas): what backend health is computed from."""

    requests: int = 0
    failures: int = 0
    faults: int = 0
    spend_usd: float = 0.0
    latency: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)
    ttft: list[int] = field(default_factory=lambda: [0] * histogram.BUCKETS)
    covered: float = 0.0  # seconds of reports these totals span (the rates' denominator)

    def add(self, load: load_pb2.BackendLoad) -> None:
        faults = sum(getattr(load.failures, kind) for kind in BACKEND_FAULTS)
        self.requests += load.requests
        self.faults += faults
        self.failures += faults + load.failures.client_error
        self.spend_usd += load.spend_usd
        histogram.merge(self.latency, load.latency.counts)
        histogram.merge(self.ttft, load.ttft.counts)

    def merge(self, other: LoadTotals) -> None:
        """Add another slot's or replica's totals; the window covered is the longer of the two."""
        self.requests += other.requests
        self.failures += other.failures
        self.faults += other.faults
        self.spend_usd += other.spend_usd
        histogram.merge(self.latency, other.latency)
        histogram.merge(self.ttft, other.ttft)
        self.covered = max(self.covered, other.covered)

    def health(self, name: str) -> BackendHealth:
        """The backend's health from these totals."""
        requests = max(self.requests, 1)
        covered = max(self.covered, SLOT)
        return BackendHealth(
            name=name,
            healthy=self.faults / requests < UNHEALTHY_FAULT_RATE,
            latency_p50_ms=round(histogram.quantile(self.latency, 0.50), 1),
            latency_p95_ms=round(histogram.quantile(self.latency, 0.95), 1),
            ttft_p95_ms=round(histogram.quantile(self.ttft, 0.95), 1),
            error_rate=round(self.failures / requests, 4),
            requests_per_minute=round(self.requests * 60.0 / covered, 2),
            spend_usd_per_hour=round(self.spend_usd * 3600.0 / covered, 6),
        )


@dataclass(slots=True)
class _Slot:
    start: float
    totals: LoadTotals = field(default_factory=LoadTotals)


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
            slots[-1].totals.add(load)

    def health(self, namespace: str, route: str, backends: Sequence[str]) -> list[BackendHealth]:
        """Health of each named backend of the route, in the order given; zeros when nothing was reported."""
        return [self.totals(namespace, route, name).health(name) for name in backends]

    def totals(self, namespace: str, route: str, backend: str) -> LoadTotals:
        """The backend's last minute, summed."""
        now = self._clock()
        total = LoadTotals(covered=min(WINDOW, max(SLOT, now - self._first_report.get(namespace, now))))
        slots = self._slots.get((namespace, route, backend), deque())
        self._prune(slots, now)
        for slot in slots:
            total.merge(slot.totals)
        return total

    def reported(self) -> list[tuple[str, str, str]]:
        """Every (namespace, route, backend) with reports in the last minute."""
        now = self._clock()
        for slots in self._slots.values():
            self._prune(slots, now)
        return [key for key, slots in self._slots.items() if slots]

    @staticmethod
    def _prune(slots: deque[_Slot], now: float) -> None:
        while slots and slots[0].start + SLOT <= now - WINDOW:
            slots.popleft()
