"""The chart's CRD: generated from llmroute.model.schema, valid, and enforcing what it promises (schema + CEL)."""

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

from llmroute.model.schema import crd
from tests.chart.conftest import CHART
from tests.tools import REPO

CRD_FILE = CHART / "crds" / "llmroutes.llmroute.io.yaml"
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))


def openapi_schema() -> dict[str, Any]:
    schema: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def routes() -> list[dict[str, Any]]:
    docs = [doc for path in EXAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]
    return [doc for doc in docs if doc.get("kind") == "LLMRoute"]


def test_chart_crd_is_the_one_the_code_generates() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == crd(), (
        "charts/llmroute/crds is stale: run `llmroute crd > charts/llmroute/crds/llmroutes.llmroute.io.yaml`"
    )


def test_crd_is_a_valid_kubernetes_1_30_object() -> None:
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), "1.30.0", strict=True)


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


def failed_rules(route: dict[str, Any]) -> list[str]:
    """Messages of the CEL rules the route breaks, evaluated as the API server would (cel-python)."""
    env = celpy.Environment()
    failed = []
    for rule, message, value in cel_rules(openapi_schema(), route):
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
