"""Kubernetes Events the operator posts (about an LLMRoute, an LLMPolicy or its own Pod), named the way
client-go names them, as `kubectl describe` shows them."""

from __future__ import annotations

import logging
import time
from typing import Any

from .kubeapi import KubeAPI
from .reconcile import RouteObject
from .status import now_rfc3339

log = logging.getLogger(__name__)

COMPONENT = "llmroute-operator"


async def post_event_about(
    api: KubeAPI, involved: dict[str, str], reason: str, message: str, event_type: str = "Warning"
) -> None:
    """Post one Event (a Warning unless `event_type` says otherwise) about `involved` (apiVersion, kind, name,
    namespace, uid); a failure is logged, never raised (Events are best effort)."""
    now = now_rfc3339()
    namespace = involved["namespace"]
    event: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        # client-go's naming: <object>.<unix nanoseconds in hex>
        "metadata": {"name": f"{involved['name']}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": event_type,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    try:
        await api.request("POST", f"/api/v1/namespaces/{namespace}/events", event)
    except Exception as exc:
        kind, name = involved["kind"], involved["name"]
        log.warning("could not post Event %s for %s %s/%s: %s", reason, kind, namespace, name, exc)


async def post_event(
    api: KubeAPI, kind: str, obj: RouteObject, reason: str, message: str, event_type: str = "Warning"
) -> None:
    """Post one Event about an LLMRoute or LLMPolicy (`kind`) of the operator's API group."""
    involved = {"apiVersion": "llmroute.io/v1alpha1", "kind": kind, "name": obj.name}
    await post_event_about(api, {**involved, "namespace": obj.namespace, "uid": obj.uid}, reason, message, event_type)
