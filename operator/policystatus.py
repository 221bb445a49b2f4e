"""The `status` of one LLMPolicy: its conditions, and per budget and rate limit what the sidecars used.

Pure: built from the parse verdict, the sidecars' ACKs and the quota figures. An unchanged policy
yields an identical status (conditions keep their lastTransitionTime), so nothing is patched.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmroute.model.policy import Budget, Policy, Quantity, QuotaKey

from .controlplane import SidecarCounts
from .quotas import QuotaFigures
from .reconcile import Check
from .status import condition, now_rfc3339

EXHAUSTED_SHARE = 0.99
"""A budget whose sidecars refuse requests with this share of it used or reserved is exhausted, also where the
size of the requests refused is not known."""
WARN_SHARE = 0.8
"""The share of a budget at which a Warning Event says it is nearly spent."""
STATES = ("Ok", "Downgraded", "Exhausted")

Figures = Callable[[QuotaKey], QuotaFigures | None]
_RATE_FIELDS: tuple[tuple[Quantity, str], ...] = (("requests", "requestsLastMinute"), ("tokens", "tokensLastMinute"))


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's current window as status shows it."""

    budget: Budget
    window_start: float
    spent: float
    state: str
    spent_out: bool = False
    """What is left pays for no request: the budget is spent, not only split into pieces too small for one
    (which the operator gathers, so a state of Exhausted for that reason alone is brief)."""

    @property
    def share(self) -> float:
        return self.spent / self.budget.limit_usd if self.budget.limit_usd > 0 else 1.0


def budget_state(budget: Budget, figures: QuotaFigures | None, now: float) -> BudgetState:
    """Spent and state of a budget in its current window (nothing known yet: 0 spent). It is exhausted (or
    downgraded) once spent, once what is left is less than the smallest request the window has seen, or while
    requests are refused and what is left is split into pieces each smaller than that request."""
    start = budget.window.start(now)
    if figures is None or figures.window_start != start:
        return BudgetState(budget, start, 0.0, "Ok")
    limit = budget.limit_usd
    spent = figures.used
    spent_out = (
        spent >= limit
        # What is left once everything in flight has settled pays for no request the window has seen.
        or (figures.smallest_ask > 0 and limit - spent < figures.smallest_ask)
        or (figures.rejected > 0 and spent + figures.reserved >= EXHAUSTED_SHARE * limit)
    )
    # Sidecars refuse requests and no sidecar's room, nor the rest no sidecar holds, pays for one.
    split = figures.rejected > 0 and figures.largest_piece is not None and figures.largest_piece < figures.smallest_ask
    state = "Ok"
    if spent_out or split:
        state = "Downgraded" if budget.action == "Downgrade" else "Exhausted"
    return BudgetState(budget, start, spent, state, spent_out)


def programmed(generation: int, sidecars: SidecarCounts, *, reconnecting: bool) -> Check:
    """Programmed: whether every connected sidecar the policy applies to ACKed a policy set carrying it."""
    if sidecars.rejected:
        detail = "; ".join(f"{m.pod}: {m.message}" for m in sidecars.messages) or "no detail given"
        return Check(
            "False", "RejectedByProxy", f"{sidecars.rejected} sidecar(s) rejected generation {generation}: {detail}"
        )
    if sidecars.connected == 0:
        if reconnecting:
            return Check("Unknown", "Reconnecting", "the operator has just started and sidecars are reconnecting")
        return Check("False", "NoSidecars", "no connected sidecar that enforces policies is in scope of this policy")
    if sidecars.programmed < sidecars.connected:
        return Check(
            "False",
            "Pending",
            f"{sidecars.programmed} of {sidecars.connected} sidecars enforce generation {generation}",
        )
    return Check("True", "AllSidecarsAcked", f"all {sidecars.connected} sidecars enforce generation {generation}")


def _rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_status(
    *,
    generation: int,
    accepted: Check,
    policy: Policy | None,
    sidecars: SidecarCounts,
    figures: Figures,
    previous: Mapping[str, Any] | None,
    now: float,
    reconnecting: bool = False,
) -> dict[str, Any]:
    """The whole status of one policy (`policy` None when it is invalid: conditions only)."""
    stamp = now_rfc3339()
    before = list((previous or {}).get("conditions") or [])
    checks = {"Accepted": accepted}
    if policy is None:
        checks["Programmed"] = Check("False", "Invalid", "the policy is not enforced: see the Accepted condition")
        status: dict[str, Any] = {"observedGeneration": generation}
    else:
        checks["Programmed"] = programmed(generation, sidecars, reconnecting=reconnecting)
        status = {"observedGeneration": generation, "tier": policy.tier, **_limits(policy, figures, now)}
    status["conditions"] = [condition(k, c, generation, before, stamp) for k, c in checks.items()]
    return status


def _limits(policy: Policy, figures: Figures, now: float) -> dict[str, Any]:
    states = [
        budget_state(b, figures(QuotaKey(policy.namespace, policy.name, b.name, "usd")), now) for b in policy.budgets
    ]
    budgets = [
        {
            "name": s.budget.name,
            "windowStart": _rfc3339(s.window_start),
            "spentUSD": round(s.spent, 6),
            "limitUSD": s.budget.limit_usd,
            "remainingUSD": round(max(0.0, s.budget.limit_usd - s.spent), 6),
            "state": s.state,
        }
        for s in states
    ]
    rate_limits = []
    for rate in policy.rate_limits:
        entry: dict[str, Any] = {"name": rate.name}
        for quantity, field in _RATE_FIELDS:
            got = figures(QuotaKey(policy.namespace, policy.name, rate.name, quantity))
            if got is not None:
                entry[field] = round(got.previous_used if got.previous_used is not None else got.used)
        rate_limits.append(entry)
    out: dict[str, Any] = {"budgets": budgets, "rateLimits": rate_limits}
    if states:
        nearest = max(states, key=lambda s: s.share)
        out["budgetState"] = max((s.state for s in states), key=STATES.index)
        out["spentUSD"] = round(nearest.spent, 6)
        out["limitUSD"] = nearest.budget.limit_usd
    return out
