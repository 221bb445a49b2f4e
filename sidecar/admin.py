"""The admin port: Prometheus metrics, health, readiness and debug views (never secrets)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmroute.http import Request, Response
from llmroute.model import route_spec
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.runtime import Router


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _json(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload, indent=2, default=str).encode() + b"\n")


class AdminApp:
    """Handler for the admin port. `source_problems` says what is wrong with the route source right now."""

    def __init__(
        self,
        router: Router,
        metrics: SidecarMetrics,
        *,
        source_problems: Callable[[], dict[str, list[str]]],
        draining: Callable[[], bool],
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.source_problems = source_problems
        self.draining = draining

    async def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            return _json(405, {"error": "use GET"})
        match request.path:
            case "/metrics":
                return Response(200, generate_latest(self.metrics.registry), content_type=CONTENT_TYPE_LATEST)
            case "/healthz":
                return _json(200, {"status": "ok"})
            case "/readyz":
                if self.draining():
                    return _json(503, {"status": "draining"})
                if not self.router.ready:
                    return _json(503, {"status": "no routing table loaded yet", "problems": self.source_problems()})
                return _json(
                    200, {"status": "ready", "version": self.router.table.version if self.router.table else ""}
                )
            case "/debug/routes":
                return _json(200, self.routes())
            case "/debug/backends":
                return _json(200, self.backends())
        return _json(404, {"error": f"no such endpoint: {request.path}"})

    def routes(self) -> dict[str, Any]:
        """The table in use: version and each route's canonical spec (key references by name only)."""
        table = self.router.table
        return {
            "version": table.version if table else None,
            "routes": [
                {"name": r.name, "namespace": r.namespace, "generation": r.generation, "spec": route_spec(r)}
                for r in (table.routes if table else ())
            ],
            "problems": self.source_problems(),
        }

    def backends(self) -> dict[str, Any]:
        """Live estimates and ejection state of every backend, per route."""
        now = time.monotonic()
        out: dict[str, Any] = {}
        for key, runtime in self.router.runtimes.items():
            ejection = {s.name: s for s in runtime.detector.snapshot(now)}
            out[key] = [
                {
                    "name": c.name,
                    "provider": c.spec.provider,
                    "url": c.spec.url,
                    "model": c.spec.model,
                    "apis": sorted(c.spec.apis),
                    "context_window": c.spec.context_window,
                    # inf (a first request still out, never answered) is not JSON: shown as null
                    "expected_latency_s": _finite(c.expected_latency(now)),
                    **c.stats.snapshot(now),
                    "ejection": {
                        "state": ejection[c.name].state,
                        "reason": ejection[c.name].reason,
                        "consecutive_failures": ejection[c.name].consecutive_failures,
                        "ejections": ejection[c.name].ejections,
                        "remaining_s": ejection[c.name].remaining_s,
                    },
                    "shadow_probes": {
                        "chat_output_cap": runtime.probe_bodies.cap(c.spec),
                        "refused_pause_s": runtime.shadow.refused_for(c.name, now),
                    },
                }
                for c in runtime.candidates
            ]
        return out
