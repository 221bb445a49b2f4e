"""LLMPolicy in the operator (kopf against the API emulator): routes outside `allowed`, the policy set the
sidecars get, and the status and Events that show spend."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from llmroute.model.policy import QuotaKey
from llmroute.model.policy_parse import parse_window
from llmroute.v1.quota_keys import key_message

if TYPE_CHECKING:
    from conftest import Bench


def limits(**allowed: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"tier": "growth", "budgets": [{"name": "monthly", "window": "30d", "limitUSD": 1.0}]}
    spec["rateLimits"] = [{"name": "rpm", "requestsPerMinute": 600}]
    if allowed:
        spec["allowed"] = allowed
    return spec


async def _policy_condition(bench: Bench, kind: str, **expected: Any) -> dict[str, Any] | None:
    policy = await bench.kube.get_policy("shop", "limits")
    cond = bench.condition(policy, kind)
    return policy if cond and all(cond.get(k) == v for k, v in expected.items()) else None


async def _route_condition(bench: Bench, name: str, kind: str, **expected: Any) -> dict[str, Any] | None:
    route = await bench.kube.get_route("shop", name)
    cond = bench.condition(route, kind)
    return route if cond and all(cond.get(k) == v for k, v in expected.items()) else None


async def test_a_route_outside_allowed_is_refused_while_the_last_good_table_serves(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _route_condition(bench, "support", "Programmed", status="True"), what="programmed")
    await bench.kube.apply_policy("shop", "limits", limits(hosts=["api.openai.com"]))

    # A new generation of the route still uses 127.0.0.1: refused, naming the policy; generation 1 serves on.
    await bench.kube.apply_route("shop", "support", bench.spec(["chat", "chat-mini"]))
    route = await bench.eventually(
        lambda: _route_condition(bench, "support", "Accepted", status="False", observedGeneration=2),
        what="PolicyViolation",
    )
    accepted = bench.condition(route, "Accepted")
    assert accepted["reason"] == "PolicyViolation"
    assert accepted["message"] == ("LLMPolicy shop/limits: backend primary: host 127.0.0.1 is not in allowed.hosts")
    assert sidecar.table()["support"].generation == 1
    assert json.loads(sidecar.table()["support"].spec_json)["models"] == ["chat"]
    events = await bench.eventually(lambda: bench.kube.events("shop"), what="a Warning Event")
    assert ("Warning", "PolicyViolation", "support") in [
        (e["type"], e["reason"], e["involvedObject"]["name"]) for e in events
    ]

    # A new route outside `allowed` is never served; once the policy allows it, it is.
    await bench.kube.apply_route("shop", "other", bench.spec(["other"]))
    await bench.eventually(
        lambda: _route_condition(bench, "other", "Accepted", reason="PolicyViolation"), what="the new route refused"
    )
    assert "other" not in sidecar.table()
    await bench.kube.apply_policy("shop", "limits", limits(hosts=["api.openai.com", "127.0.0.1"]))
    await bench.eventually(lambda: _route_condition(bench, "other", "Accepted", status="True"), what="allowed now")
    await bench.eventually(lambda: _served(sidecar, "other"), what="the allowed route at the sidecar")


async def _served(sidecar: Any, name: str) -> bool:
    return name in sidecar.table()


async def test_sidecars_get_the_policies_and_status_shows_spend_with_events(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_policy("shop", "limits", limits())
    await sidecar.subscribe_policies()

    async def policy_set() -> list[str]:
        return [p.name for p in sidecar.policies[-1].policies.policies] if sidecar.policies else []

    assert await bench.eventually(policy_set, what="the policy set at the sidecar") == ["limits"]
    policy = await bench.eventually(
        lambda: _policy_condition(bench, "Programmed", status="True"), what="the policy programmed"
    )
    assert bench.condition(policy, "Accepted")["status"] == "True"
    assert policy["status"]["tier"] == "growth"

    window = int(parse_window("30d").start(time.time()))  # the calendar month: it does not turn mid-test
    key = key_message(QuotaKey("shop", "limits", "monthly", "usd"))
    await sidecar.report_quota(key, window, used=0.85, demand=0.1)

    async def budget(state: str, spent: float) -> dict[str, Any] | None:
        obj = await bench.kube.get_policy("shop", "limits")
        status = (obj or {}).get("status") or {}
        [entry] = status.get("budgets") or [{}]
        return status if entry.get("state") == state and entry.get("spentUSD") == spent else None

    status = await bench.eventually(lambda: budget("Ok", 0.85), what="spend in the status")
    assert status["budgets"][0]["limitUSD"] == 1.0
    assert status["budgets"][0]["remainingUSD"] == 0.15
    assert (status["budgetState"], status["spentUSD"], status["limitUSD"]) == ("Ok", 0.85, 1.0)
    assert status["rateLimits"] == [{"name": "rpm", "requestsLastMinute": 0}]  # no requests reported yet

    async def reasons() -> list[str]:
        return [e["reason"] for e in await bench.kube.events("shop") if e["involvedObject"]["kind"] == "LLMPolicy"]

    assert await bench.eventually(reasons, what="the 80% Event") == ["BudgetAt80Percent"]
    await sidecar.report_quota(key, window, used=1.0, demand=0.2)
    status = await bench.eventually(lambda: budget("Exhausted", 1.0), what="the budget exhausted")
    assert status["budgetState"] == "Exhausted"
    assert await bench.eventually(lambda: _after(reasons, 2), what="the exhausted Event") == [
        "BudgetAt80Percent",
        "BudgetExhausted",
    ]


async def _after(reasons: Any, count: int) -> list[str] | None:
    found: list[str] = await reasons()
    return found if len(found) >= count else None


async def test_an_invalid_policy_is_not_accepted_and_not_sent(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await sidecar.subscribe_policies()
    spec = limits()
    spec["rateLimits"] = [{"name": "empty"}]  # the emulator has no CEL: the operator finds it
    await bench.kube.apply_policy("shop", "limits", spec)
    policy = await bench.eventually(lambda: _policy_condition(bench, "Accepted", status="False"), what="Accepted=False")
    assert bench.condition(policy, "Accepted")["message"] == (
        "spec.rateLimits[0]: set requestsPerMinute, tokensPerMinute or both"
    )
    assert bench.condition(policy, "Programmed")["reason"] == "Invalid"
    await bench.eventually(lambda: _got_set(sidecar), what="a policy set")
    assert list(sidecar.policies[-1].policies.policies) == []  # the namespace's set, without the invalid one


async def _got_set(sidecar: Any) -> bool:
    return bool(sidecar.policies)
