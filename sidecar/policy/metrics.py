"""Per-quota gauges (`llmroute_policy_*`), read from the ledger when Prometheus scrapes: the request path
pays nothing for them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from llmroute.sidecar.policy.admission import Admission

_LABELS = ["policy", "limit", "quantity", "tier"]
_GAUGES = (
    ("llmroute_policy_used", "Used in the current window (settled requests): USD, requests or tokens."),
    ("llmroute_policy_reserved", "Reserved by requests in flight, at their estimates."),
    ("llmroute_policy_granted", "What this sidecar may use in the current window: its share (alone: the limit)."),
    ("llmroute_policy_limit", "The policy's whole limit per window, over every sidecar."),
)


class PolicyCollector(Collector):
    """Each quota of the policies in force, by policy (`namespace/name`), limit, quantity and tier."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = [GaugeMetricFamily(name, doc, labels=_LABELS) for name, doc in _GAUGES]
        now = self._admission.ledger.clock()
        for limit in self._admission.limits:
            quota = limit.quota
            quota.roll(now)
            key = quota.key
            labels = [f"{key.namespace}/{key.policy}", key.limit, key.quantity, limit.policy.tier]
            for family, value in zip(families, (quota.used, quota.reserved, quota.granted, quota.limit), strict=True):
                family.add_metric(labels, value)
        yield from families
