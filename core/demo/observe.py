"""What the sidecar says about itself, read the way an operator would: its admin port's /debug/backends
(live estimates, ejection state) and /metrics (failovers, hedges, retries, failed attempts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class BackendView:
    """One backend as /debug/backends shows it (latencies in seconds, None before any sample)."""

    name: str
    state: str
    p50: float | None
    p95: float | None
    in_flight: int
    failure_rate: float


@dataclass(slots=True)
class SidecarView:
    """A snapshot of the sidecar's own view and counters."""

    backends: list[BackendView] = field(default_factory=list)
    failovers: float = 0.0
    hedges_sent: float = 0.0
    hedges_won: float = 0.0
    retries: float = 0.0
    ejections: float = 0.0
    failed_attempts: dict[str, float] = field(default_factory=dict)
    """Failed calls to each backend (any failure kind)."""

    def counters(self) -> dict[str, float]:
        """The router's counters, for the summary."""
        return {
            "failovers": self.failovers,
            "hedges_sent": self.hedges_sent,
            "hedges_won": self.hedges_won,
            "retries": self.retries,
            "ejections": self.ejections,
        }


_OK_OUTCOMES = frozenset({"success", "shadow"})


class AdminClient:
    """Reads the sidecar's admin port."""

    def __init__(self, admin_url: str, route: str) -> None:
        self._http = httpx.AsyncClient(base_url=admin_url, timeout=5.0)
        self._route = route

    async def aclose(self) -> None:
        await self._http.aclose()

    async def snapshot(self) -> SidecarView:
        backends = (await self._http.get("/debug/backends")).raise_for_status().json()
        metrics = (await self._http.get("/metrics")).raise_for_status().text
        view = SidecarView(backends=[_backend(b) for b in backends.get(self._route, [])])
        _count(view, metrics)
        return view


def _backend(raw: dict[str, Any]) -> BackendView:
    return BackendView(
        name=raw["name"],
        state=raw["ejection"]["state"],
        p50=raw.get("latency_p50_s"),
        p95=raw.get("latency_p95_s"),
        in_flight=int(raw.get("in_flight") or 0),
        failure_rate=float(raw.get("failure_rate") or 0.0),
    )


def _count(view: SidecarView, text: str) -> None:
    """Add up the counters the demo shows from the Prometheus exposition."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels, value = sample.labels, sample.value
            match family.name:
                case "llmroute_fallbacks":
                    view.failovers += value
                case "llmroute_retries":
                    view.retries += value
                case "llmroute_ejections":
                    view.ejections += value
                case "llmroute_hedges":
                    if labels.get("result") == "sent":
                        view.hedges_sent += value
                    elif labels.get("result") == "won":
                        view.hedges_won += value
                case "llmroute_upstream_attempts" if labels.get("outcome") not in _OK_OUTCOMES:
                    backend = labels["backend"]
                    view.failed_attempts[backend] = view.failed_attempts.get(backend, 0.0) + value
