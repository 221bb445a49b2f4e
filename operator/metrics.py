"""The operator's own Prometheus series, in the registry the admin port serves (with the control plane's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

ROUTE_STATES = ("serving", "stale", "rejected")


class OperatorMetrics:
    """Reconcile counters and the route-state gauge; one registry per operator, so tests can run several."""

    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        self.reconciles = Counter(
            "llmroute_reconciles_total", "Namespace reconciles run (LLMRoutes compiled and published).",
            registry=registry,
        )  # fmt: skip
        self.reconcile_errors = Counter(
            "llmroute_reconcile_errors_total", "Namespace reconciles that failed and will be retried.",
            registry=registry,
        )  # fmt: skip
        self.routes = Gauge(
            "llmroute_routes",
            "LLMRoutes by namespace and state: serving (its current generation is published), stale (its last"
            " good generation serves), rejected (nothing of it is published).",
            ["namespace", "state"],
            registry=registry,
        )
        self.leader = Gauge(
            "llmroute_leader", "1 while this replica holds the leader Lease (writes status and Events), else 0.",
            registry=registry,
        )  # fmt: skip
        self.task_crashes = Counter(
            "llmroute_background_task_crashes_total",
            "Crashes of the operator's background loops, by task; each loop restarts after a back-off.",
            ["task"],
            registry=registry,
        )
        self.ca_publish_failures = Counter(
            "llmroute_ca_publish_failures_total",
            "CA ConfigMap writes that did not happen, by reason: error (the API refused or failed; retried) or"
            " conflict (a ConfigMap of that name not created by llmroute; left alone).",
            ["reason"],
            registry=registry,
        )
