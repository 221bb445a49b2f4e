"""LLMPolicy parsing and validation: the typed Policy, and every invalid input naming its field."""

from __future__ import annotations

import calendar
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmroute.model import parse_document
from llmroute.model.files import load_policies, load_routes
from llmroute.model.policy import Window, policy_violation
from llmroute.model.policy_parse import (
    PolicyInvalid,
    parse_policy_document,
    parse_policy_spec,
    parse_window,
    policy_spec,
)

EXAMPLES = Path(__file__).parents[2] / "examples"


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / "shop-limits.yaml").read_text())
    return doc


def problems_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_spec(spec, name="p", namespace="ns")
    return [str(p) for p in info.value.problems]


def test_example_parses_with_every_field() -> None:
    policy = parse_policy_document(example())
    assert (policy.namespace, policy.name, policy.tier, policy.passthrough) == (
        "shop",
        "shop-limits",
        "growth",
        "Allow",
    )
    monthly, hourly, reports = policy.budgets
    assert monthly.window == Window(30 * 86400, calendar_month=True)
    assert (monthly.action, monthly.downgrade_max_price_per_mtok, monthly.limit_usd) == ("Downgrade", 1.0, 2000.0)
    assert hourly.window == Window(3600) and hourly.action == "Reject"
    assert reports.action == "Observe" and reports.routes == {"support-chat"}
    assert reports.workload_selector.matches({"app": "reports", "x": "y"})
    assert not reports.workload_selector.matches({"app": "storefront"})
    [batch] = policy.rate_limits
    assert (batch.requests_per_minute, batch.tokens_per_minute, batch.priorities) == (600, 200000, {"batch"})
    assert policy.allowed.providers == {"openai", "anthropic"}
    assert policy.allowed.max_price_per_mtok == 20.0


def test_a_minimal_policy_has_no_limits_and_allows_everything() -> None:
    policy = parse_policy_spec({}, name="p", namespace="ns")
    assert (policy.budgets, policy.rate_limits, policy.passthrough, policy.tier) == ((), (), "Allow", "")
    route = parse_document(yaml.safe_load((EXAMPLES / "support-chat.yaml").read_text()))
    assert policy_violation(route.backends, [policy]) is None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s["budgets"][1].update(window="90s"), "spec.budgets[1].window: invalid window '90s'"),
        (lambda s: s["budgets"][1].update(window="32d"), "spec.budgets[1].window: invalid window '32d'"),
        (lambda s: s["budgets"][1].update(window="745h"), "spec.budgets[1].window: window '745h' is longer than 31d"),
        (lambda s: s["budgets"][1].update(limitUSD=-1), "spec.budgets[1].limitUSD: -1 is less than the minimum"),
        (lambda s: s["budgets"][1].update(action="Deny"), "spec.budgets[1].action: 'Deny' is not one of"),
        (lambda s: s["budgets"][1].update(name="monthly"), "spec.budgets[1].name: duplicate budget name 'monthly'"),
        (lambda s: s["budgets"][0].pop("downgrade"), "spec.budgets[0]: set downgrade exactly when action is Downgrade"),
        (
            lambda s: s["budgets"][1].update(downgrade={"maxPricePerMTok": 1}),
            "spec.budgets[1]: set downgrade exactly when action is Downgrade",
        ),
        (lambda s: s["budgets"][1].update(Window="1h"), "spec.budgets[1]: unknown field ('Window' was unexpected)"),
        (
            lambda s: s["rateLimits"][0].pop("requestsPerMinute") and s["rateLimits"][0].pop("tokensPerMinute"),
            "spec.rateLimits[0]: set requestsPerMinute, tokensPerMinute or both",
        ),
        (lambda s: s["rateLimits"][0].update(priorities=["urgent"]), "spec.rateLimits[0].priorities[0]: 'urgent'"),
        (lambda s: s["rateLimits"].append({**s["rateLimits"][0]}), "spec.rateLimits[1].name: duplicate rate limit"),
        (lambda s: s["allowed"].update(providers=["bard"]), "spec.allowed.providers[0]: 'bard' is not one of"),
        (lambda s: s["allowed"].update(hosts=["https://x.com"]), "spec.allowed.hosts[0]"),
        (lambda s: s.update(passthrough="Maybe"), "spec.passthrough: 'Maybe' is not one of"),
    ],
)
def test_invalid_specs_name_field_and_problem(mutate: Any, expected: str) -> None:
    spec = copy.deepcopy(example()["spec"])
    mutate(spec)
    assert any(expected in p for p in problems_of(spec)), problems_of(spec)


def test_every_problem_is_reported_not_only_the_first() -> None:
    spec = copy.deepcopy(example()["spec"])
    spec["budgets"][1]["window"] = "1w"
    spec["rateLimits"][0] = {"name": "empty"}
    assert len(problems_of(spec)) == 2, problems_of(spec)


def test_document_envelope_is_checked() -> None:
    with pytest.raises(PolicyInvalid) as info:
        parse_policy_document({"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "metadata": {}, "spec": {}})
    text = str(info.value)
    assert "kind: expected 'LLMPolicy', got 'LLMRoute'" in text and "metadata.name: is required" in text


@pytest.mark.parametrize(
    ("text", "window"),
    [
        ("1m", Window(60)),
        ("15m", Window(900)),
        ("1h", Window(3600)),
        ("1d", Window(86400)),
        ("7d", Window(7 * 86400)),
        ("30d", Window(30 * 86400, calendar_month=True)),
        ("31d", Window(31 * 86400, calendar_month=True)),
    ],
)
def test_windows(text: str, window: Window) -> None:
    assert parse_window(text) == window


def test_the_month_window_is_the_utc_calendar_month() -> None:
    month = parse_window("30d")
    feb_10 = calendar.timegm((2027, 2, 10, 13, 0, 0))
    assert month.start(feb_10) == calendar.timegm((2027, 2, 1, 0, 0, 0))
    assert month.end(feb_10) == calendar.timegm((2027, 3, 1, 0, 0, 0))  # 28 days, not 30
    hour = parse_window("1h")
    assert (hour.start(feb_10 + 59), hour.end(feb_10 + 59)) == (feb_10, feb_10 + 3600)


def test_allowed_refuses_backends_naming_the_policy() -> None:
    route = parse_document(yaml.safe_load((EXAMPLES / "support-chat.yaml").read_text()))
    policy = parse_policy_document(example())
    assert policy_violation(route.backends, [policy]) is None
    spec = example()["spec"]
    spec["allowed"]["hosts"] = ["api.openai.com", "*.anthropic.com"]
    narrow = parse_policy_spec(spec, name="narrow", namespace="platform")
    assert policy_violation(route.backends, [policy, narrow]) == (
        "LLMPolicy platform/narrow: backend deepseek: host api.deepseek.com is not in allowed.hosts"
    )
    spec["allowed"] = {"maxPricePerMTok": 5}
    cheap = parse_policy_spec(spec, name="cheap", namespace="shop")
    assert policy_violation(route.backends, [cheap]) == (
        "LLMPolicy shop/cheap: backend gpt41: price 8 USD/MTok is above allowed.maxPricePerMTok 5"
    )


def test_files_hold_routes_and_policies_side_by_side(tmp_path: Path) -> None:
    bad = copy.deepcopy(example())
    bad["metadata"]["name"] = "broken"
    bad["spec"]["budgets"][1]["window"] = "soon"
    both = tmp_path / "both.yaml"
    both.write_text((EXAMPLES / "support-chat.yaml").read_text() + "\n---\n" + yaml.safe_dump(bad))
    (tmp_path / "policy.yml").write_text((EXAMPLES / "shop-limits.yaml").read_text())
    loaded = load_policies([tmp_path])
    assert [p.name for p in loaded.policies] == ["shop-limits"]
    assert [str(p) for p in loaded.problems[f"{both}: shop/broken"]] == [
        "spec.budgets[1].window: invalid window 'soon': expected whole minutes, hours or days from 1m to 31d,"
        " such as 1h or 30d"
    ]
    routes = load_routes([tmp_path])
    assert [r.name for r in routes.routes] == ["support-chat"] and not routes.problems


def test_canonical_spec_round_trips() -> None:
    policy = parse_policy_document(example())
    assert parse_policy_spec(policy_spec(policy), name=policy.name, namespace=policy.namespace) == policy
    hourly = parse_policy_spec({"budgets": [{"name": "b", "window": "60m", "limitUSD": 1}]}, name="p", namespace="n")
    assert policy_spec(hourly)["budgets"] == [{"name": "b", "window": "1h", "limitUSD": 1.0, "action": "Reject"}]
    assert parse_policy_spec(policy_spec(hourly), name="p", namespace="n") == hourly
