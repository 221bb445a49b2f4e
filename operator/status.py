"""The `status` of one LLMRoute, built from the reconcile verdict and what the sidecars reported.

Conditions follow metav1.Condition: a list-map keyed by type whose lastTransitionTime moves only
when the condition's status changes, so an unchanged route yields an identical status (and no patch).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from .controlplane import SidecarCounts
from .loadstore import BackendHealth
from .reconcile import Check, Verdict


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it (seconds, UTC, Z)."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def programmed(verdict: Verdict, sidecars: SidecarCounts, *, reconnecting: bool = False) -> Check:
    """Programmed: whether every connected matching sidecar ACKed the table carrying this route.

    `reconnecting`: the operator has just started, so sidecars that are running may not be back yet; no
    connected sidecar then means Unknown, not False (a restart of the operator is no outage)."""
    if verdict.served_generation is None:
        return Check("False", "Invalid", "the route is not published: see the Accepted and ResolvedRefs conditions")
    serving = f"generation {verdict.served_generation}"
    if verdict.served_generation != verdict.generation:
        serving += f" (last good; generation {verdict.generation} is not accepted)"
    if sidecars.rejected:
        detail = "; ".join(f"{m.pod}: {m.message}" for m in sidecars.messages) or "no detail given"
        return Check("False", "RejectedByProxy", f"{sidecars.rejected} sidecar(s) rejected {serving}: {detail}")
    if sidecars.connected == 0 and reconnecting:
        message = f"the operator has just started and sidecars are reconnecting; {serving} is published"
        return Check("Unknown", "Reconnecting", message)
    if sidecars.connected == 0:
        return Check("False", "NoSidecars", f"no connected sidecar selects this route; {serving} is published")
    if sidecars.programmed < sidecars.connected:
        return Check("False", "Pending", f"{sidecars.programmed} of {sidecars.connected} sidecars run {serving}")
    return Check("True", "AllSidecarsAcked", f"all {sidecars.connected} sidecars run {serving}")


def condition(
    kind: str, check: Check, generation: int, previous: Sequence[Mapping[str, Any]], now: str
) -> dict[str, Any]:
    """One condition; keeps the previous lastTransitionTime while the status stays the same."""
    before = next((c for c in previous if c.get("type") == kind), None)
    since = now
    if before is not None and before.get("status") == check.status and before.get("lastTransitionTime"):
        since = before["lastTransitionTime"]
    return {
        "type": kind,
        "status": check.status,
        "reason": check.reason,
        "message": check.message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def backend_status(health: BackendHealth) -> dict[str, Any]:
    """One entry of status.backends."""
    return {
        "name": health.name,
        "healthy": health.healthy,
        "latencyP50Ms": health.latency_p50_ms,
        "latencyP95Ms": health.latency_p95_ms,
        "ttftP95Ms": health.ttft_p95_ms,
        "errorRate": health.error_rate,
        "requestsPerMinute": health.requests_per_minute,
        "spendUSDPerHour": health.spend_usd_per_hour,
    }


def backend_names(spec: Any) -> str:
    """The backend names of a spec, comma-separated (the printer column; "" for a malformed spec)."""
    backends = spec.get("backends") if isinstance(spec, Mapping) else None
    if not isinstance(backends, list):
        return ""
    return ",".join(str(b["name"]) for b in backends if isinstance(b, Mapping) and isinstance(b.get("name"), str))


def route_status(
    verdict: Verdict,
    sidecars: SidecarCounts,
    version: str,
    backends: Sequence[BackendHealth],
    previous: Mapping[str, Any] | None,
    now: str | None = None,
    *,
    spec: Any = None,
    reconnecting: bool = False,
) -> dict[str, Any]:
    """The whole status object of one route, whose observed `spec` it is (`reconnecting`: see `programmed`)."""
    now = now or now_rfc3339()
    before = list((previous or {}).get("conditions") or [])
    checks = {
        "Accepted": verdict.accepted,
        "ResolvedRefs": verdict.resolved_refs,
        "Programmed": programmed(verdict, sidecars, reconnecting=reconnecting),
    }
    return {
        "observedGeneration": verdict.generation,
        "conditions": [condition(k, c, verdict.generation, before, now) for k, c in checks.items()],
        "version": version,
        "backendNames": backend_names(spec),
        "sidecars": {
            "connected": sidecars.connected,
            "programmed": sidecars.programmed,
            "rejected": sidecars.rejected,
        },
        "backends": [backend_status(b) for b in backends],
    }
