"""The control plane's callbacks (go-control-plane's Callbacks): who a stream is, and what it is measured by.

The stream server calls these at the points Envoy's control planes hook: when a stream opens (auth),
when a response is pushed, ACKed or NACKed (metrics, config convergence).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmroute.v1 import routes_pb2

from .auth import AuthenticationFailed, Authenticator, Identity

log = logging.getLogger(__name__)


async def identify(
    authenticator: Authenticator, context: grpc.aio.ServicerContext[Any, Any], node: routes_pb2.Node
) -> Identity:
    """Authenticate the stream; abort it unless its token's namespace is the one the node claims."""
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            token = value.removeprefix("Bearer ").strip()
    try:
        identity = await authenticator.authenticate(token, node)
    except AuthenticationFailed as exc:
        log.warning("refused sidecar %s/%s: %s", node.namespace, node.pod, exc)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    except Exception as exc:
        log.warning("cannot authenticate sidecar %s/%s: %s", node.namespace, node.pod, exc)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "authentication is unavailable, retry later")
    if identity.namespace != node.namespace:
        log.warning(
            "refused sidecar %s: it claims namespace %r but its token is from %r",
            identity.subject,
            node.namespace,
            identity.namespace,
        )
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"node namespace {node.namespace!r} does not match the token's namespace {identity.namespace!r}",
        )
    return identity


@dataclass(slots=True)
class _Change:
    """A published change, waiting for every subscription it was pushed to to ACK it."""

    published_at: float
    waiting: set[object]


class PlaneMetrics:
    """Connected sidecars, pushes, NACKs, and the time from a published change to every sidecar ACKing it."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.convergence = Histogram(
            "llmroute_config_convergence_seconds",
            "Time from publishing a route change to every connected sidecar it concerns ACKing it",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
            **kw,
        )
        self.connected = Gauge("llmroute_connected_sidecars", "Sidecars with an open route stream", **kw)
        self.pushes = Counter("llmroute_pushes", "Routing tables sent to sidecars", **kw)
        self.nacks = Counter("llmroute_nacks", "Routing tables rejected by sidecars", **kw)
        self._changes: dict[str, list[_Change]] = {}

    def published(self, namespace: str, published_at: float, waiting: set[object]) -> None:
        """A change of the namespace was pushed to `waiting` (subscriptions); time it until all ACK it."""
        if waiting:
            self._changes.setdefault(namespace, []).append(_Change(published_at, waiting))

    def converged(self, namespace: str, subscription: object, *, rejected: bool = False) -> None:
        """The subscription is up to date (or gone, or rejected what it got): close the changes it completes."""
        now = time.monotonic()
        remaining = []
        for change in self._changes.get(namespace, ()):
            if subscription not in change.waiting:
                remaining.append(change)
                continue
            if rejected:
                continue  # a rejected change never converges: not observed
            change.waiting.discard(subscription)
            if change.waiting:
                remaining.append(change)
            else:
                self.convergence.observe(now - change.published_at)
        if remaining:
            self._changes[namespace] = remaining
        else:
            self._changes.pop(namespace, None)
