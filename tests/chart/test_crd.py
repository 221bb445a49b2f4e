"""The chart's CRDs: generated from llmroute.model.schema and policy_schema, valid, and enforcing what they promise
(schema + CEL)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml
from celpy.adapter import json_to_cel

from llmroute.model.policy_schema import policy_crd
from llmroute.model.schema import crd
from tests.chart.conftest import CHART
from tests.tools import REPO

CRD_FILE = CHART / "crds" / "llmroutes.llmroute.io.yaml"
POLICY_CRD_FILE = CHART / "crds" / "llmpolicies.llmroute.io.yaml"
CRDS = {"LLMRoute": (CRD_FILE, crd), "LLMPolicy": (POLICY_CRD_FILE, policy_crd)}
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


def openapi_schema(kind: str = "LLMRoute") -> dict[str, Any]:
    manifest = yaml.safe_load(CRDS[kind][0].read_text())
    schema: dict[str, Any] = manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def examples_of(kind: str) -> list[dict[str, Any]]:
    docs = [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in docs if doc.get("kind") == kind]


def routes() -> list[dict[str, Any]]:
    return examples_of("LLMRoute")


@pytest.mark.parametrize("kind", CRDS)
def test_chart_crd_is_the_one_the_code_generates(kind: str) -> None:
    path, generate = CRDS[kind]
    assert yaml.safe_load(path.read_text()) == generate(), (
        f"charts/llmroute/crds is stale: run `llmroute crd --kind {kind} > {path.relative_to(REPO)}`"
    )


@pytest.mark.parametrize("kind", CRDS)
def test_crd_is_a_valid_kubernetes_1_30_object(kind: str) -> None:
    kubernetes_validate.validate(yaml.safe_load(CRDS[kind][0].read_text()), "1.30.0", strict=True)


def test_there_are_example_routes() -> None:
    assert routes(), "examples/ holds no LLMRoute"


@pytest.mark.parametrize("route", routes(), ids=lambda r: r["metadata"]["name"])
def test_example_routes_pass_the_crd_schema_and_cel_rules(route: dict[str, Any]) -> None:
    jsonschema.validate(route, openapi_schema())
    assert failed_rules(route) == []


def cel_rules(schema: dict[str, Any], value: Any) -> Iterator[tuple[str, str, Any]]:
    """Every x-kubernetes-validations rule with the value it applies to (its `self`)."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule["rule"], rule["message"], value
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                yield from cel_rules(sub, value[name])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            yield from cel_rules(schema["items"], item)


def failed_rules(doc: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules the object breaks, evaluated as the API server would (cel-python)."""
    env = celpy.Environment()
    failed = []
    for rule, message, value in cel_rules(openapi_schema(doc["kind"]), doc):
        result = env.program(env.compile(rule)).evaluate({"self": json_to_cel(value)})
        if not bool(result):
            failed.append(message)
    return failed


def full_route() -> dict[str, Any]:
    """A copy of the example route that uses every part of the spec (examples/support-chat.yaml)."""
    return copy.deepcopy(next(r for r in routes() if r["metadata"]["name"] == "support-chat"))


def broken(change: str) -> dict[str, Any]:
    """The full example route with one rule broken."""
    route = full_route()
    spec = route["spec"]
    first = spec["backends"][0]
    if change == "duplicate backend names":
        spec["backends"].append({**first})
    elif change == "unknown fallback":
        spec["fallback"] = ["nowhere"]
    elif change == "duplicate models":
        spec["models"] = ["chat", "chat"]
    elif change == "both key sources":
        first["apiKeySecretRef"], first["apiKeyEnv"] = {"name": "keys", "key": "openai"}, "OPENAI_API_KEY"
    elif change == "json on anthropic":
        claude = next(b for b in spec["backends"] if b["provider"] == "anthropic")
        claude["capabilities"] = ["tools", "json"]
    elif change == "chat on anthropic":
        claude = next(b for b in spec["backends"] if b["provider"] == "anthropic")
        claude["apis"] = ["messages", "chat"]
    elif change == "repeated api":
        first["apis"] = ["chat", "chat"]
    elif change == "mixed embedding models":
        spec["backends"][0]["apis"] = ["chat", "embeddings"]
        spec["backends"][-1]["apis"] = ["embeddings"]
    return route


CEL_CASES = [
    ("duplicate backend names", "backend names must be unique"),
    ("unknown fallback", "every fallback entry must name a backend of this route"),
    ("duplicate models", "model names must be unique"),
    ("both key sources", "set at most one of apiKeySecretRef and apiKeyEnv"),
    ("json on anthropic", "provider anthropic cannot serve 'json' requests"),
    ("chat on anthropic", "provider anthropic serves only the messages API, and only provider anthropic serves it"),
    ("repeated api", "apis must not repeat an entry"),
    (
        "mixed embedding models",
        "backends that serve embeddings must all name the same model: vectors of different embedding models are"
        " not comparable, so a route never fails over between them",
    ),
]
"""Each way `broken` breaks a CEL rule, with the rule's message (tests/apiserver checks them for real)."""


@pytest.mark.parametrize(("change", "message"), CEL_CASES)
def test_cel_rules_reject_invalid_routes(change: str, message: str) -> None:
    route = broken(change)
    jsonschema.validate(route, openapi_schema())  # structurally fine: only CEL catches it
    assert failed_rules(route) == [message]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "strategy"), "fastest"),
        (("spec", "backends", 0, "name"), "Not_A_DNS_Label"),
        (("spec", "priorities", "critical", "timeout"), "soon"),
        (("spec", "models"), []),
    ],
)
def test_schema_rejects_out_of_range_fields(path: tuple[str | int, ...], value: Any) -> None:
    route = full_route()
    target: Any = route
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(route, openapi_schema())


def test_there_are_example_policies() -> None:
    assert examples_of("LLMPolicy"), "examples/ holds no LLMPolicy"


@pytest.mark.parametrize("policy", examples_of("LLMPolicy"), ids=lambda p: p["metadata"]["name"])
def test_example_policies_pass_the_crd_schema_and_cel_rules(policy: dict[str, Any]) -> None:
    jsonschema.validate(policy, openapi_schema("LLMPolicy"))
    assert failed_rules(policy) == []


def broken_policy(change: str) -> dict[str, Any]:
    """The example policy (examples/shop-limits.yaml) with one CEL rule broken."""
    policy = copy.deepcopy(next(p for p in examples_of("LLMPolicy") if p["metadata"]["name"] == "shop-limits"))
    spec = policy["spec"]
    if change == "duplicate budget names":
        spec["budgets"][1]["name"] = spec["budgets"][0]["name"]
    elif change == "duplicate rate limit names":
        spec["rateLimits"].append({**spec["rateLimits"][0]})
    elif change == "downgrade without its price":
        del spec["budgets"][0]["downgrade"]
    elif change == "downgrade price on Reject":
        spec["budgets"][1]["downgrade"] = {"maxPricePerMTok": 1}
    elif change == "rate limit without a limit":
        spec["rateLimits"][0] = {"name": "nothing", "priorities": ["batch"]}
    return policy


POLICY_CEL_CASES = [
    ("duplicate budget names", "budget names must be unique"),
    ("duplicate rate limit names", "rate limit names must be unique"),
    ("downgrade without its price", "set downgrade exactly when action is Downgrade"),
    ("downgrade price on Reject", "set downgrade exactly when action is Downgrade"),
    ("rate limit without a limit", "set requestsPerMinute, tokensPerMinute or both"),
]
"""Each way `broken_policy` breaks a CEL rule, with the rule's message (tests/apiserver checks them for real)."""


@pytest.mark.parametrize(("change", "message"), POLICY_CEL_CASES)
def test_cel_rules_reject_invalid_policies(change: str, message: str) -> None:
    policy = broken_policy(change)
    jsonschema.validate(policy, openapi_schema("LLMPolicy"))  # structurally fine: only CEL catches it
    assert failed_rules(policy) == [message]


@pytest.mark.parametrize(
    ("budget_field", "value"), [("window", "1w"), ("window", "32d"), ("window", "90s"), ("action", "Deny")]
)
def test_policy_schema_rejects_out_of_range_fields(budget_field: str, value: Any) -> None:
    policy = broken_policy("none")
    policy["spec"]["budgets"][1][budget_field] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(policy, openapi_schema("LLMPolicy"))
