"""Live state behind a routing table: per route its balancer policies, per backend its stats and client.

A new table builds new RouteRuntimes but carries over, by route and backend name, the stats, ejection
state, retry budget and (when the backend's wire identity is unchanged) the upstream client, so a reload
neither forgets what traffic taught nor drops warm connections. Requests in flight keep the runtime
they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

from llmroute.model import Backend, Priority, Route, RoutingTable
from llmroute.sidecar.balancer.candidates import Candidate
from llmroute.sidecar.balancer.concurrency import ConcurrencyGate
from llmroute.sidecar.balancer.ejection import OutlierDetector
from llmroute.sidecar.balancer.estimator import BackendStats
from llmroute.sidecar.balancer.freshness import ShadowProber
from llmroute.sidecar.balancer.retry_budget import RetryBudget
from llmroute.sidecar.probebody import ProbeBodies
from llmroute.sidecar.upstream.client import Upstream
from llmroute.sidecar.upstream.egress import Egress

log = logging.getLogger("llmroute.sidecar")

WireKey = tuple[str, str, str, str, str, frozenset[str], str]


def wire_key(backend: Backend) -> WireKey:
    """What makes two backends the same upstream client: provider, URL, model, API version, key (hashed), the
    APIs it serves natively (which decide how each inbound API is carried to it) and its CA bundle (hashed)."""
    key = backend.api_key.reveal() if backend.api_key is not None else ""
    digest = hashlib.sha256(key.encode()).hexdigest()
    ca = hashlib.sha256(backend.ca_bundle.reveal().encode()).hexdigest() if backend.ca_bundle is not None else ""
    return (backend.provider, backend.url, backend.model, backend.api_version, digest, backend.apis, ca)


class UpstreamPool:
    """Upstream clients shared by every route that names the same backend; a client no longer in the
    table is closed once its last in-flight call has ended. Every client gets the sidecar's egress settings."""

    def __init__(self, egress: Egress | None = None) -> None:
        self._egress = egress
        self._clients: dict[WireKey, Upstream] = {}
        self._leases: dict[Upstream, int] = {}
        self._retired: set[Upstream] = set()

    def get(self, backend: Backend) -> Upstream:
        """The client for this backend, created on first use."""
        key = wire_key(backend)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = Upstream(backend, self._egress)
        return client

    def lease(self, client: Upstream) -> None:
        """A call on `client` begins."""
        self._leases[client] = self._leases.get(client, 0) + 1

    def release(self, client: Upstream) -> None:
        """A call on `client` ended; close it if it was retired and this was the last call."""
        left = self._leases[client] - 1
        if left:
            self._leases[client] = left
            return
        del self._leases[client]
        if client in self._retired:
            self._retired.discard(client)
            asyncio.get_running_loop().create_task(client.aclose())

    def keep_only(self, backends: list[Backend]) -> None:
        """Retire clients for backends no longer in any route."""
        wanted = {wire_key(b) for b in backends}
        for key in [k for k in self._clients if k not in wanted]:
            client = self._clients.pop(key)
            if client in self._leases:
                self._retired.add(client)
            else:
                asyncio.get_running_loop().create_task(client.aclose())

    async def aclose(self) -> None:
        """Close every client (shutdown)."""
        clients = [*self._clients.values(), *self._retired]
        self._clients.clear()
        self._retired.clear()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


class RouteRuntime:
    """One route's balancer: candidates (spec + stats), ejection, retry budget, shadow probes, gates."""

    candidates: list[Candidate]
    detector: OutlierDetector
    retry_budget: RetryBudget
    shadow: ShadowProber
    probe_bodies: ProbeBodies
    gates: dict[Priority, ConcurrencyGate]

    def __init__(self, route: Route, pool: UpstreamPool, previous: RouteRuntime | None = None) -> None:
        self.route = route
        self.pool = pool
        old_stats = {c.name: c.stats for c in previous.candidates} if previous else {}
        self.candidates = [Candidate(b, old_stats.get(b.name) or BackendStats()) for b in route.backends]
        self.by_name = {c.name: c for c in self.candidates}
        self.upstreams = {b.name: pool.get(b) for b in route.backends}
        names = [b.name for b in route.backends]
        od = route.outlier_detection
        if previous is not None and previous.route.outlier_detection == od:
            self.detector = previous.detector
            self.detector.set_backends(names)
        else:
            self.detector = OutlierDetector(
                names,
                consecutive_failures=od.consecutive_failures,
                base_ejection=od.base_ejection_time,
                max_ejection_percent=od.max_ejection_percent,
            )
        percent = route.retry.retry_budget_percent
        keep = previous is not None and previous.route.retry.retry_budget_percent == percent
        self.retry_budget = previous.retry_budget if previous is not None and keep else RetryBudget(percent)
        self.shadow = previous.shadow if previous is not None else ShadowProber()
        self.probe_bodies = previous.probe_bodies if previous is not None else ProbeBodies()
        self.probe_bodies.retain(route.backends)
        self.gates: dict[Priority, ConcurrencyGate] = {}
        for priority, policy in route.priorities.items():
            if policy.max_concurrency is None:
                continue
            old = previous.gates.get(priority) if previous is not None else None
            same = old is not None and old.limit == policy.max_concurrency
            self.gates[priority] = (
                old if old is not None and same else ConcurrencyGate(policy.max_concurrency, f"{route.name}/{priority}")
            )


class Router:
    """The table in use and its runtimes; `apply` swaps both at once (one assignment, no await)."""

    def __init__(self, egress: Egress | None = None) -> None:
        self.pool = UpstreamPool(egress)
        self.table: RoutingTable | None = None
        self.runtimes: dict[str, RouteRuntime] = {}
        self.by_model: dict[str, RouteRuntime] = {}

    @property
    def ready(self) -> bool:
        """Whether a table has been loaded (the /readyz answer)."""
        return self.table is not None

    def apply(self, table: RoutingTable) -> None:
        """Switch to `table`; requests already running finish on the runtime they hold."""
        runtimes = {r.key: RouteRuntime(r, self.pool, self.runtimes.get(r.key)) for r in table.routes}
        by_model = {m: runtimes[r.key] for r in table.routes for m in r.models}
        self.table, self.runtimes, self.by_model = table, runtimes, by_model
        self.pool.keep_only([b for r in table.routes for b in r.backends])
