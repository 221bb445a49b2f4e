"""The control plane's snapshot cache (go-control-plane's SnapshotCache): typed resources per namespace.

The operator sets a namespace's routes and policies; the cache keeps the current snapshot of each
type, answers which resource a pod of given labels gets, and, debounced (about 100 ms, at most
`max_delay` after the first unpushed change), tells the stream server to push the namespace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from llmroute.model import Route
from llmroute.model.policy import Policy
from llmroute.v1 import rpc
from llmroute.waits import wait_event

from .policytables import PolicySnapshot, policy_snapshot
from .tables import Snapshots

TYPES = (rpc.TYPE_ROUTES, rpc.TYPE_POLICIES)


class Resource(Protocol):
    """One resource as a sidecar gets it: routing table or policy set."""

    @property
    def version(self) -> str: ...

    @property
    def generations(self) -> Mapping[str, int]: ...

    def response(self, nonce: str) -> bytes: ...


def type_of(type_url: str) -> str:
    """The resource type a request names (an empty type_url is the routing table, for older sidecars)."""
    return type_url or rpc.TYPE_ROUTES


@dataclass(slots=True)
class _Entry:
    routes: Snapshots | None = None  # None until the operator first publishes the namespace's routes
    policies: PolicySnapshot | None = None  # None until it first publishes the namespace's policies
    changed_at: float | None = None  # first change not yet pushed


class SnapshotCache:
    """Current routes and policies of every namespace; `on_update(namespace)` when a push is due."""

    def __init__(self, on_update: Callable[[str], None], *, debounce: float, max_delay: float) -> None:
        self.on_update = on_update
        self.debounce = debounce
        self.max_delay = max_delay
        self._entries: dict[str, _Entry] = {}
        self._attached = False
        self._due: dict[str, float] = {}  # namespace -> monotonic time its debounced push is due
        self._wake = asyncio.Event()

    def attach(self) -> None:
        """Push from now on (before the server starts, changes are only kept); `run` must be running."""
        self._attached = True

    def close(self) -> None:
        """Drop pending pushes."""
        self._due.clear()

    async def run(self) -> None:
        """Push each namespace whose debounce is over, until cancelled: a supervised loop, so a push that
        crashes is logged and done again after the restart."""
        while True:
            now = time.monotonic()
            for namespace in [n for n, at in self._due.items() if at <= now]:
                del self._due[namespace]
                try:
                    self.on_update(namespace)
                except Exception:
                    self._due.setdefault(namespace, time.monotonic() + self.debounce)  # pushed after the restart
                    raise
            self._wake.clear()
            if self._due:
                await wait_event(self._wake, max(0.0, min(self._due.values()) - time.monotonic()))
            else:
                await self._wake.wait()

    def set_routes(self, namespace: str, routes: Sequence[Route]) -> None:
        """The namespace's accepted routes; an unchanged set schedules nothing."""
        entry = self._entries.setdefault(namespace, _Entry())
        snapshots = Snapshots(routes)
        if entry.routes is not None and entry.routes.routes == snapshots.routes:
            return
        first = entry.routes is None
        entry.routes = snapshots
        self._schedule(namespace, entry, first)

    def set_policies(self, namespace: str, policies: Sequence[Policy]) -> None:
        """The policies that apply to the namespace's sidecars; an unchanged set schedules nothing."""
        entry = self._entries.setdefault(namespace, _Entry())
        ordered = tuple(sorted(policies, key=lambda p: (p.namespace, p.name)))
        if entry.policies is not None and entry.policies.policies == ordered:
            return
        snapshot = policy_snapshot(ordered)
        first = entry.policies is None
        entry.policies = snapshot
        self._schedule(namespace, entry, first)

    def routes(self, namespace: str) -> tuple[Route, ...] | None:
        """The namespace's published routes (None: not published yet)."""
        entry = self._entries.get(namespace)
        return None if entry is None or entry.routes is None else entry.routes.routes

    def policies(self, namespace: str) -> tuple[Policy, ...] | None:
        """The policies published for the namespace (None: not published yet)."""
        entry = self._entries.get(namespace)
        return None if entry is None or entry.policies is None else entry.policies.policies

    def namespaces(self) -> list[str]:
        """Every namespace something was published for."""
        return list(self._entries)

    def resource(self, namespace: str, type_url: str, labels: Mapping[str, str]) -> Resource | None:
        """What a pod with these labels gets of this type now (None: nothing published yet, it waits)."""
        entry = self._entries.get(namespace)
        if entry is None:
            return None
        if type_url == rpc.TYPE_POLICIES:
            return entry.policies
        return None if entry.routes is None else entry.routes.for_labels(labels)

    def take_change(self, namespace: str) -> float:
        """When the change being pushed was first made (the start of its convergence time)."""
        entry = self._entries[namespace]
        published_at = entry.changed_at or time.monotonic()
        entry.changed_at = None
        return published_at

    def _schedule(self, namespace: str, entry: _Entry, first: bool) -> None:
        if not self._attached:
            return
        now = time.monotonic()
        if entry.changed_at is None:
            entry.changed_at = now
        delay = 0.0 if first else max(0.0, min(self.debounce, entry.changed_at + self.max_delay - now))
        self._due[namespace] = now + delay
        self._wake.set()
