"""The operator's state and work loop: which namespaces need a reconcile, their verdicts, their status.

kopf handlers only mark a namespace dirty; one worker reconciles dirty namespaces from the kopf
index (so a burst of changes, or the initial listing, costs one reconcile), publishes to the control
plane, posts Warning Events for new problems and marks the routes' status for the StatusWriter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from llmroute.model import compile_table
from llmroute.supervise import Loop

from .bootstrap import BootstrapWriter
from .controlplane import BackendHealth, ControlPlane, SidecarCounts
from .events import post_event
from .kubeapi import KubeAPI
from .metrics import ROUTE_STATES, OperatorMetrics
from .policies import PolicyController
from .reconcile import LastGood, RouteObject, Verdict, reconcile
from .secrets import SecretCache, referenced_secrets
from .status import route_status
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)

RouteIndex = Mapping[str, Iterable[RouteObject]]


class StatusView(Protocol):
    """Where a route's sidecar counts and backend health come from (the control plane, or the whole fleet)."""

    def route_sidecars(self, namespace: str, name: str) -> SidecarCounts: ...

    def backend_health(self, namespace: str, name: str) -> list[BackendHealth]: ...


@dataclass(frozen=True, slots=True)
class _Known:
    """A route as last reconciled: its object, the verdict, and the namespace table version."""

    obj: RouteObject
    verdict: Verdict
    version: str


class Controller:
    """Reconciles namespaces on demand and answers what each route's status should be."""

    def __init__(
        self,
        api: KubeAPI,
        control_plane: ControlPlane,
        metrics: OperatorMetrics,
        *,
        status_interval: float = 1.0,
        status_refresh: float = 15.0,
        retry_after: float = 2.0,
        leading: Callable[[], bool] = lambda: True,
        view: StatusView | None = None,
        policies: PolicyController | None = None,
    ) -> None:
        self.api = api
        self.view: StatusView = view or control_plane
        self._leading = leading
        self.control_plane = control_plane
        self.metrics = metrics
        self.secrets = SecretCache()
        self.status = StatusWriter(api, self, interval=status_interval, may_write=leading)
        self.bootstrap = BootstrapWriter(api, control_plane, self._uids, may_write=leading)
        self._status_refresh = status_refresh
        self._retry_after = retry_after
        self._index: RouteIndex = {}
        self._indexed = False
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._last_good: dict[str, dict[str, LastGood]] = {}
        self._known: dict[str, dict[str, _Known]] = {}
        self._seen: dict[tuple[str, str], tuple[str, int, Any]] = {}
        self._warned: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self.policies = policies
        """LLMPolicies (None: none are watched); each reconcile publishes those that apply to the namespace."""
        control_plane.on_change = self.sidecars_changed

    # -- triggers (called from kopf handlers and the control plane) ---------------------------------

    def indexed(self, index: RouteIndex) -> None:
        """kopf finished its initial listing: reconciles may read the index now."""
        self._index = index
        self._indexed = True

    def namespace_seen(self, namespace: str, index: RouteIndex) -> None:
        """A namespace exists and kopf's index is complete: without routes there, its sidecars get an empty table."""
        self.indexed(index)
        if namespace not in self._index:
            self._synced(namespace)

    def route_event(self, event_type: str | None, obj: RouteObject, index: RouteIndex) -> None:
        """An LLMRoute changed: reconcile its namespace unless only its status or metadata did."""
        self.indexed(index)
        key = (obj.namespace, obj.name)
        if event_type == "DELETED":
            self._seen.pop(key, None)
        else:
            fingerprint = (obj.uid, obj.generation, obj.spec)
            if self._seen.get(key) == fingerprint:
                return
            self._seen[key] = fingerprint
        self.touch(obj.namespace)

    def secret_event(self, namespace: str, name: str, data: Mapping[str, str] | None) -> None:
        """A referenced Secret was created, changed or deleted (None)."""
        self.secrets.put(namespace, name, data)
        self.touch(namespace)

    def touch(self, namespace: str) -> None:
        """Reconcile the namespace soon."""
        self._dirty.add(namespace)
        self._wake.set()

    def leadership_changed(self, leading: bool) -> None:
        """LeaderElection.on_change: a new leader writes every route's status afresh; a former one stops."""
        self.metrics.leader.set(1 if leading else 0)
        if leading:
            self.status.resume()
            self.bootstrap.resume()
            for namespace in list(self._known):
                self.sidecars_changed(namespace)

    def sidecars_changed(self, namespace: str) -> None:
        """ControlPlane.on_change: sidecars connected, ACKed, NACKed or reported load."""
        for name in self._known.get(namespace, {}):
            self.status.mark(namespace, name)
        if self._indexed and namespace not in self._index:
            self._synced(namespace)

    def _synced(self, namespace: str) -> None:
        """A namespace without routes: its sidecars get an empty table and the policies that apply there."""
        self.control_plane.synced([namespace])
        if self.policies is not None:
            self.control_plane.publish_policies(namespace, self.policies.applying(namespace))

    def policy_event(self, event_type: str | None, obj: RouteObject, index: RouteIndex, routes: RouteIndex) -> None:
        """An LLMPolicy changed: reconcile the namespaces it applies to."""
        self.indexed(routes)
        if self.policies is not None:
            self.policies.event(event_type, obj, index, self.control_plane.cache.namespaces())

    # -- the worker ---------------------------------------------------------------------------------

    def loops(self) -> dict[str, Loop]:
        """The background loops the operator supervises: reconciling, writing status and bootstrap tables,
        refreshing status."""
        return {
            "reconcile worker": self._work,
            "status writer": self.status.run,
            "bootstrap writer": self.bootstrap.run,
            "status refresh": self._refresh,
        }

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            for namespace in sorted(batch):
                await self._reconcile_safely(namespace)

    async def _refresh(self) -> None:
        """Backend health moves without events: re-mark every route now and then (unchanged ones are skipped)."""
        while True:
            await asyncio.sleep(self._status_refresh)
            for namespace in list(self._known):
                self.sidecars_changed(namespace)

    async def _reconcile_safely(self, namespace: str) -> None:
        try:
            await self.reconcile(namespace)
        except Exception:
            self.metrics.reconcile_errors.inc()
            log.exception("reconcile of namespace %s failed; retrying in %.0fs", namespace, self._retry_after)
            asyncio.get_running_loop().call_later(self._retry_after, self.touch, namespace)

    async def reconcile(self, namespace: str) -> None:
        """Compile every LLMRoute of the namespace and publish the accepted ones."""
        started = time.monotonic()
        objects = list(self._index.get(namespace, ()))
        if objects and namespace not in self._last_good:  # first look at it: learn what the leader served
            self._last_good[namespace] = await self.bootstrap.last_good(namespace)
        names = referenced_secrets(o.spec for o in objects)
        self.secrets.retain(namespace, names)
        for name in sorted(names):
            if not self.secrets.known(namespace, name):
                data = await self.api.get_secret_data(namespace, name)
                if not self.secrets.known(namespace, name):  # a watch event may have answered meanwhile
                    self.secrets.put(namespace, name, data)
        policies = self.policies.applying(namespace) if self.policies is not None else []
        result = reconcile(
            objects, self.secrets, self.secrets.exists, self._last_good.get(namespace, {}), self.secrets.ca, policies
        )
        self.control_plane.publish(namespace, result.routes)
        self.control_plane.publish_policies(namespace, policies)
        self.bootstrap.mark(namespace)
        version = compile_table(result.routes).table.version
        self.metrics.reconciles.inc()
        by_name = {o.name: o for o in objects}
        known = {n: _Known(by_name[n], v, version) for n, v in result.verdicts.items()}
        for gone in set(self._known.get(namespace, {})) - set(known):
            self.status.forget(namespace, gone)
            self._warned.pop((namespace, gone), None)
        self._known[namespace] = known
        self._last_good[namespace] = result.last_good
        if not objects:
            del self._known[namespace], self._last_good[namespace]
        self._count(namespace, result.verdicts.values())
        log.info(
            "namespace %s: %d of %d LLMRoutes published (table %s) in %.1f ms",
            namespace,
            len(result.routes),
            len(objects),
            version,
            (time.monotonic() - started) * 1000,
        )
        for name, entry in known.items():
            self.status.mark(namespace, name)
            await self._warn(entry)

    def _count(self, namespace: str, verdicts: Iterable[Verdict]) -> None:
        counts = dict.fromkeys(ROUTE_STATES, 0)
        for v in verdicts:
            state = (
                "rejected"
                if v.served_generation is None
                else "serving"
                if v.served_generation == v.generation
                else "stale"
            )
            counts[state] += 1
        for state, count in counts.items():
            self.metrics.routes.labels(namespace, state).set(count)

    async def _warn(self, entry: _Known) -> None:
        """One Warning Event per new problem of a route (the message names Secrets and keys, never values)."""
        key = (entry.obj.namespace, entry.obj.name)
        problems = {
            (c.reason, c.message) for c in (entry.verdict.accepted, entry.verdict.resolved_refs) if c.status == "False"
        }
        new = problems - self._warned.get(key, set())
        self._warned[key] = problems
        for reason, message in sorted(new):
            await self._post_event(entry.obj, reason, message)

    async def _post_event(self, obj: RouteObject, reason: str, message: str) -> None:
        if self._leading():  # else the leader posts it
            await post_event(self.api, "LLMRoute", obj, reason, message)

    def _uids(self, namespace: str) -> dict[str, str]:
        return {name: entry.obj.uid for name, entry in self._known.get(namespace, {}).items()}

    # -- status source ------------------------------------------------------------------------------

    def desired_status(self, namespace: str, name: str) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
        """What the route's status should say now, and what the object has (None once the route is gone)."""
        entry = self._known.get(namespace, {}).get(name)
        if entry is None:
            return None
        current = self._current_status(namespace, name)
        desired = route_status(
            entry.verdict,
            self.view.route_sidecars(namespace, name),
            entry.version,
            self.view.backend_health(namespace, name),
            current,
            spec=entry.obj.spec,
            reconnecting=self.control_plane.reconnecting,
        )
        return desired, current

    def _current_status(self, namespace: str, name: str) -> Mapping[str, Any]:
        for obj in self._index.get(namespace, ()):
            if obj.name == name:
                return obj.status
        return {}
