"""The admission filter: before a request is dispatched, reserve its estimated cost on every quota of every
LLMPolicy that applies to it, all or nothing, and refuse (Reject), narrow the backends (Downgrade) or only
count (Observe) when one does not fit.

Which limits apply to a request, which backends `allowed` leaves out and the prices its USD estimate is
taken at depend only on its route and priority (the pod's labels are fixed), so they are compiled once per
route table and priority (a `_Plan`) and the request path only adds numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from llmroute.model import Backend, Price, Priority, Route
from llmroute.model.policy import Action, Policy, Quantity, QuotaKey, Window, mean_price
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.policy.ledger import SLOTS, Quota, QuotaLedger, Reservation

if TYPE_CHECKING:
    from llmroute.sidecar.dispatch import Call

MINUTE = Window(60)
"""Rate limits count per UTC minute."""
_UNIT = {"usd": "USD", "requests": "requests", "tokens": "tokens"}


@dataclass(frozen=True, slots=True)
class Limit:
    """One quota of one policy as requests meet it."""

    policy: Policy
    quota: Quota
    action: Action
    code: str
    """The 429's error code: budget_exceeded or rate_limit_exceeded."""
    routes: frozenset[str] = frozenset()
    priorities: frozenset[Priority] = frozenset()
    max_price: float | None = None
    """Downgrade: the mean price per million tokens a backend may have."""

    def applies(self, route: str, priority: Priority) -> bool:
        return (not self.routes or route in self.routes) and (not self.priorities or priority in self.priorities)

    def describe(self) -> str:
        key, window = self.quota.key, self.quota.window
        per = "month (UTC)" if window.calendar_month else f"{window.seconds} s window (UTC)"
        kind = "budget" if key.quantity == "usd" else "rate limit"
        return (
            f"LLMPolicy {key.namespace}/{key.policy} {kind} {key.limit}: {self.quota.limit:g}"
            f" {_UNIT[key.quantity]} per {per}"
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """Admission compiled for one route (as one routing table has it) at one priority."""

    route: Route
    limits: tuple[Limit, ...]
    excluded: dict[str, str]
    """The route's backends some policy's `allowed` refuses, and why (shared by every request: read only)."""
    refused: str
    """Not empty when `allowed` leaves no backend of the route: the 403's message."""
    prices: tuple[Price, ...]
    """The prices of the backends left, when a USD budget applies (the estimate is taken at the dearest)."""


@dataclass(slots=True)
class Decision:
    """What the policies decided for one request: the record the access log and the response headers read."""

    reservation: Reservation | None = None
    """Held from admission to the request's end (None when it was refused)."""
    refused_by: str = ""
    """The policy whose limit refused the request."""
    code: str = ""
    downgraded_by: str = ""
    """The policy whose Downgrade budget narrowed the backends (x-llmroute-downgraded)."""
    observed: tuple[str, ...] = ()
    """Observe limits the request went over (counted, not enforced)."""
    excluded: dict[str, str] = field(default_factory=dict)
    """Backends left out by policy, and why."""


class Admission:
    """The policies that apply to this sidecar, compiled into limits on the ledger's quotas."""

    def __init__(self, ledger: QuotaLedger, labels: dict[str, str], metrics: SidecarMetrics) -> None:
        self.ledger = ledger
        self.labels = labels
        self.metrics = metrics
        self.policies: tuple[Policy, ...] = ()
        self.limits: tuple[Limit, ...] = ()
        self.active = False
        """Whether any policy applies (without one, admission costs the request path nothing)."""
        self._plans: dict[tuple[str, Priority], _Plan] = {}
        self._unrouted: dict[Priority, tuple[Limit, ...]] = {}

    def apply(self, policies: Sequence[Policy]) -> None:
        """Enforce `policies` from now on; quotas that stay keep their usage and grants."""
        limits: list[Limit] = []
        for policy in policies:
            for budget in policy.budgets:
                if budget.workload_selector.matches(self.labels):
                    key = QuotaKey(policy.namespace, policy.name, budget.name, "usd")
                    quota = self.ledger.track(key, budget.window, budget.limit_usd)
                    quota.enforced = budget.action != "Observe"
                    limits.append(
                        Limit(
                            policy,
                            quota,
                            budget.action,
                            "budget_exceeded",
                            routes=budget.routes,
                            max_price=budget.downgrade_max_price_per_mtok,
                        )
                    )
            for rate in policy.rate_limits:
                if not rate.workload_selector.matches(self.labels):
                    continue
                sides: tuple[tuple[Quantity, int | None], ...] = (
                    ("requests", rate.requests_per_minute),
                    ("tokens", rate.tokens_per_minute),
                )
                for quantity, per_minute in sides:
                    if per_minute is not None:
                        quota = self.ledger.track(
                            QuotaKey(policy.namespace, policy.name, rate.name, quantity), MINUTE, per_minute
                        )
                        limits.append(Limit(policy, quota, "Reject", "rate_limit_exceeded", priorities=rate.priorities))
        self.ledger.keep_only(limit.quota.key for limit in limits)
        self.policies, self.limits = tuple(policies), tuple(limits)
        self.active = bool(self.policies)
        self._plans.clear()
        self._unrouted.clear()

    def admit(self, call: Call) -> None:
        """Reserve `call`'s estimate on every limit that applies (its Decision goes on `call.policy`), or raise
        the 429 of the first Reject limit it does not fit."""
        route = call.runtime.route
        plan = self._plans.get((route.key, call.priority))
        if plan is None or plan.route is not route:  # first request, or a new routing table
            plan = self._plans[(route.key, call.priority)] = self._plan(route, call.priority)
        if plan.refused:
            raise ProxyError(403, plan.refused, "policy_violation")
        decision = call.policy = Decision(excluded=plan.excluded)
        now = self.ledger.clock()
        usd = 0.0  # at the dearest backend the request may use
        for price in plan.prices:
            cost = price.cost(call.tokens_in, call.tokens_out)
            if cost > usd:
                usd = cost
        amounts = (usd, float(call.tokens_in + call.tokens_out), 1.0)  # by Quota.slot
        downgrade: Limit | None = None
        observed: list[str] | None = None
        claims = []
        for limit in plan.limits:
            quota = limit.quota
            amount = amounts[quota.slot]
            claims.append((quota, amount))
            if quota.ask(amount, now):
                continue
            if limit.action == "Observe":
                if observed is None:
                    observed = []
                observed.append(limit.policy.name)
                self._count(limit, "observed")
            elif limit.action == "Downgrade" and limit.max_price is not None:
                downgrade = downgrade or limit
            else:
                needs = f"this request needs about {amount:g}"
                self._refuse(decision, limit, now, f"{limit.describe()}; {needs}")
        if downgrade is not None:
            amounts = (self._downgrade(call, decision, downgrade, now), amounts[1], 1.0)
            claims = [(quota, amounts[quota.slot]) for quota, _ in claims]
        if observed:
            decision.observed = tuple(observed)
        decision.reservation = Reservation(claims, self.ledger.clock)

    def admit_unrouted(self, priority: Priority) -> Reservation:
        """Reserve one request on every requests-per-minute limit that applies to a request no route serves (a
        passthrough request), or raise the 429 of the first it does not fit. Its model has no price and its
        tokens are not read, so budgets and tokens-per-minute limits do not count it."""
        limits = self._unrouted.get(priority)
        if limits is None:
            limits = self._unrouted[priority] = tuple(
                limit
                for limit in self.limits
                if limit.quota.slot == SLOTS["requests"] and (not limit.priorities or priority in limit.priorities)
            )
        now = self.ledger.clock()
        for limit in limits:
            if not limit.quota.ask(1.0, now):
                self._refuse(Decision(), limit, now, f"{limit.describe()} (passthrough requests count too)")
        return Reservation([(limit.quota, 1.0) for limit in limits], self.ledger.clock)

    def _plan(self, route: Route, priority: Priority) -> _Plan:
        """Compile admission for `route` at `priority`: the limits that apply, the backends left, their prices."""
        limits = tuple(limit for limit in self.limits if limit.applies(route.name, priority))
        excluded = self._outside_allowed(route)
        refused = ""
        if excluded and len(excluded) == len(route.backends):
            why = "; ".join(f"{name}: {reason}" for name, reason in excluded.items())
            refused = f"no backend of route {route.name} is allowed here: {why}"
        usd = any(limit.quota.quantity == "usd" for limit in limits)
        prices = tuple(b.price for b in route.backends if b.name not in excluded) if usd else ()
        return _Plan(route, limits, excluded, refused, prices)

    def _downgrade(self, call: Call, decision: Decision, limit: Limit, now: float) -> float:
        """Leave out the backends above `limit`'s downgrade price; the new estimate, or the 429 when none is left."""
        assert limit.max_price is not None
        name = limit.policy.name
        why = f"above LLMPolicy {name}'s downgrade price of {limit.max_price:g} USD/MTok (its budget is spent)"
        decision.excluded = dict(decision.excluded)  # the route's own list is shared by every request
        for candidate in call.runtime.candidates:
            if candidate.name not in decision.excluded and mean_price(candidate.spec) > limit.max_price:
                decision.excluded[candidate.name] = why
        if len(decision.excluded) == len(call.runtime.candidates):
            why = f"{limit.describe()}, and no backend of the route is cheap enough to downgrade to"
            self._refuse(decision, limit, now, why)
        decision.downgraded_by = name
        self._count(limit, "downgraded")
        return self._estimate(call, decision.excluded)

    def _refuse(self, decision: Decision, limit: Limit, now: float, message: str) -> None:
        limit.quota.rejected += 1
        self._count(limit, "rejected")
        decision.refused_by, decision.code = limit.policy.name, limit.code
        headers = [("retry-after", str(limit.quota.retry_after(now))), ("x-llmroute-policy", limit.policy.name)]
        raise ProxyError(429, f"{limit.code}: {message}", limit.code, headers)

    def _count(self, limit: Limit, decision: str) -> None:
        m = self.metrics
        key = limit.quota.key
        m.child(m.policy_decisions, f"{key.namespace}/{key.policy}", key.limit, limit.policy.tier, decision).inc()

    @staticmethod
    def _estimate(call: Call, excluded: dict[str, str]) -> float:
        """USD the request may cost: its prompt estimate and output limit at the dearest backend it may use."""
        usd = 0.0
        for candidate in call.runtime.candidates:
            if candidate.name not in excluded:
                cost = candidate.spec.price.cost(call.tokens_in, call.tokens_out)
                if cost > usd:
                    usd = cost
        return usd

    def _outside_allowed(self, route: Route) -> dict[str, str]:
        """The route's backends that some policy's `allowed` refuses, and why."""
        refused: dict[str, str] = {}
        for backend in route.backends:
            for policy in self.policies:
                why = policy.allowed.refuses(backend, _host(backend))
                if why is not None:
                    refused.setdefault(backend.name, f"outside LLMPolicy {policy.name}'s allowed: {why}")
        return refused


def _host(backend: Backend) -> str:
    return urlsplit(backend.url).hostname or ""
