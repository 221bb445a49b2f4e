"""The operator's LLMPolicies: which apply to a namespace, their status, and Events as budgets run out.

Policies come from kopf's index (so route reconciles wait for it at start). A namespace's sidecars get
its own valid policies and those of the operator's namespace (cluster-wide); invalid ones are left out
with Accepted=False. A change to a policy reconciles the namespaces it applies to, so routes outside
`allowed` turn PolicyViolation and the sidecars get the new set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from llmroute.model.policy import Policy, QuotaKey
from llmroute.model.policy_parse import PolicyInvalid, parse_policy_spec, window_text

from .controlplane import SidecarCounts
from .events import post_event
from .kubeapi import KubeAPI
from .policystatus import WARN_SHARE, budget_state, policy_status
from .quotas import QuotaFigures
from .reconcile import Check, RouteObject
from .statuswriter import StatusWriter

log = logging.getLogger(__name__)

PolicyIndex = Mapping[str, Iterable[RouteObject]]
VALID = Check("True", "Valid", "the policy is valid")
_CONSEQUENCE = {
    "Reject": "it is exhausted: requests it covers are refused (429 budget_exceeded) until the window turns",
    "Downgrade": "it is exhausted: requests it covers go only to cheaper backends until the window turns",
    "Observe": "it is exhausted (Observe: requests are only counted, never refused)",
}


class PolicyView(Protocol):
    """Where a policy's sidecar counts and quota figures come from (the control plane, or the whole fleet)."""

    def policy_sidecars(self, namespace: str, name: str, generation: int) -> SidecarCounts: ...

    def quota_figures(self, key: QuotaKey) -> QuotaFigures | None: ...


@dataclass(frozen=True, slots=True)
class _Parsed:
    obj: RouteObject
    policy: Policy | None
    accepted: Check


class PolicyController:
    """Parses the indexed LLMPolicies, says which apply where, and writes their status (on the leader)."""

    def __init__(
        self,
        api: KubeAPI,
        view: PolicyView,
        operator_namespace: str,
        touch: Callable[[str], None],
        *,
        leading: Callable[[], bool] = lambda: True,
        reconnecting: Callable[[], bool] = lambda: False,
        status_interval: float = 1.0,
        refresh: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.view = view
        self.operator_namespace = operator_namespace
        self._touch = touch
        self._leading = leading
        self._reconnecting = reconnecting
        self._refresh = refresh
        self._clock = clock
        self.status = StatusWriter(api, self, interval=status_interval, may_write=leading, plural="llmpolicies")
        self._index: PolicyIndex = {}
        self._parsed: dict[tuple[str, str], _Parsed] = {}
        self._warned: dict[tuple[str, str], set[tuple[str, str, int]]] = {}

    # -- triggers -----------------------------------------------------------------------------------

    def event(self, event_type: str | None, obj: RouteObject, index: PolicyIndex, namespaces: Iterable[str]) -> None:
        """An LLMPolicy changed: reconcile what it applies to (every namespace for the operator's own)."""
        self._index = index
        key = (obj.namespace, obj.name)
        if event_type == "DELETED":
            self._parsed.pop(key, None)
            self.status.forget(*key)
        else:
            self.status.mark(*key)
        targets = set(namespaces) if obj.namespace == self.operator_namespace else {obj.namespace}
        for namespace in sorted(targets | {obj.namespace}):
            self._touch(namespace)

    def indexed(self, index: PolicyIndex) -> None:
        """The latest index (kopf passes it to every handler)."""
        self._index = index

    # -- what applies -------------------------------------------------------------------------------

    def _parse(self, obj: RouteObject) -> _Parsed:
        known = self._parsed.get((obj.namespace, obj.name))
        if known is not None and known.obj == obj:
            return known
        try:
            policy = parse_policy_spec(obj.spec, name=obj.name, namespace=obj.namespace, generation=obj.generation)
            parsed = _Parsed(obj, policy, VALID)
        except PolicyInvalid as exc:
            parsed = _Parsed(obj, None, Check("False", "Invalid", "; ".join(str(p) for p in exc.problems)))
        self._parsed[(obj.namespace, obj.name)] = parsed
        return parsed

    def own(self, namespace: str) -> list[Policy]:
        """The valid policies of one namespace."""
        parsed = (self._parse(obj) for obj in self._index.get(namespace, ()))
        return [p.policy for p in parsed if p.policy is not None]

    def applying(self, namespace: str) -> list[Policy]:
        """Every valid policy that applies to the namespace: its own and the operator namespace's."""
        cluster = self.own(self.operator_namespace) if namespace != self.operator_namespace else []
        return sorted([*self.own(namespace), *cluster], key=lambda p: (p.namespace, p.name))

    # -- status and Events --------------------------------------------------------------------------

    def desired_status(self, namespace: str, name: str) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
        """What the policy's status should say now, and what the object has (None once it is gone)."""
        obj = next((o for o in self._index.get(namespace, ()) if o.name == name), None)
        if obj is None:
            return None
        parsed = self._parse(obj)
        desired = policy_status(
            generation=obj.generation,
            accepted=parsed.accepted,
            policy=parsed.policy,
            sidecars=self.view.policy_sidecars(namespace, name, obj.generation),
            figures=self.view.quota_figures,
            previous=obj.status,
            now=self._clock(),
            reconnecting=self._reconnecting(),
        )
        return desired, obj.status

    async def refresh(self) -> None:
        """Re-mark every policy each `refresh` seconds (spend moves without events) and post budget Events."""
        while True:
            for namespace, objects in list(self._index.items()):
                for obj in objects:
                    self.status.mark(namespace, obj.name)
                    await self._warn(obj)
            await asyncio.sleep(self._refresh)

    async def _warn(self, obj: RouteObject) -> None:
        """A Warning Event when a budget passes 80% and when it is spent, once per budget and window. A budget
        that reads Exhausted only because what is left is split into pieces too small for a request gets no
        Event: the operator gathers them, and requests pass again."""
        policy = self._parse(obj).policy
        if policy is None or not self._leading():
            return
        now = self._clock()
        starts = {b.name: int(b.window.start(now)) for b in policy.budgets}
        key = (obj.namespace, obj.name)
        seen = self._warned[key] = {e for e in self._warned.get(key, set()) if e[2] >= starts.get(e[0], 0)}
        for budget in policy.budgets:
            figures = self.view.quota_figures(QuotaKey(obj.namespace, obj.name, budget.name, "usd"))
            state = budget_state(budget, figures, now)
            window = starts[budget.name]
            spent = f"{state.spent:.2f} of {budget.limit_usd:g} USD in this {window_text(budget.window)} window"
            if state.spent_out and (budget.name, "exhausted", window) not in seen:
                seen |= {(budget.name, "exhausted", window), (budget.name, "80", window)}
                then = _CONSEQUENCE[budget.action]
                await post_event(
                    self.api, "LLMPolicy", obj, "BudgetExhausted", f"budget {budget.name}: {spent}; {then}"
                )
            elif state.share >= WARN_SHARE and (budget.name, "80", window) not in seen:
                seen.add((budget.name, "80", window))
                message = f"budget {budget.name} is {state.share:.0%} spent: {spent}"
                await post_event(self.api, "LLMPolicy", obj, "BudgetAt80Percent", message)
