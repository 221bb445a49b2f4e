"""Kubernetes Events about the operator's objects (LLMRoute, LLMPolicy), posted the way client-go names them."""

from __future__ import annotations

import logging
import time

from .kubeapi import KubeAPI
from .reconcile import RouteObject
from .status import now_rfc3339

log = logging.getLogger(__name__)


async def post_event(
    api: KubeAPI, kind: str, obj: RouteObject, reason: str, message: str, event_type: str = "Warning"
) -> None:
    """Post one Event about `obj` (of `kind`); a failure is logged, never raised (Events are best effort)."""
    now = now_rfc3339()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go's naming: <object>.<unix nanoseconds in hex>
        "metadata": {"name": f"{obj.name}.{time.time_ns():x}", "namespace": obj.namespace},
        "involvedObject": {
            "apiVersion": "llmroute.io/v1alpha1",
            "kind": kind,
            "name": obj.name,
            "namespace": obj.namespace,
            "uid": obj.uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": "llmroute-operator"},
        "reportingComponent": "llmroute-operator",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await api.request("POST", f"/api/v1/namespaces/{obj.namespace}/events", event)
    except Exception as exc:
        log.warning("could not post Event %s for %s %s/%s: %s", reason, kind, obj.namespace, obj.name, exc)
