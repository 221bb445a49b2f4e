"""A backend as the balancer sees it for one request: its spec from the routing table plus its live stats."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from llmroute.model.spec import Backend

from .concurrency import has_headroom
from .ejection import OutlierDetector
from .estimator import BackendStats


@dataclass(slots=True)
class Candidate:
    """A backend spec paired with its stats. Keep one per (route, backend name) across table reloads, and
    re-pair the new spec with the old stats, so estimates and ejections survive a reload."""

    spec: Backend
    stats: BackendStats
    name: str = field(init=False)
    """The backend's name, copied once: read many times a request, never worth a property call."""

    def __post_init__(self) -> None:
        self.name = self.spec.name

    def expected_latency(self, now: float, *, stream: bool = False) -> float:
        """The stats' estimate with this backend's load sensitivity (self-hosted or maxConcurrency)."""
        return self.stats.expected_latency(now, load_sensitive=self.spec.load_sensitive, stream=stream)


def eligible(candidates: Iterable[Candidate], detector: OutlierDetector) -> list[Candidate]:
    """Those not ejected (nor being probed) and below their maxConcurrency, in the given order.
    Capability filtering (tools, vision, json) is the request path's, before this."""
    return [
        c for c in candidates if detector.is_available(c.spec.name) and has_headroom(c.stats, c.spec.max_concurrency)
    ]
