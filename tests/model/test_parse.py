"""LLMRoute parsing and validation: every invalid input names the field and the problem."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmroute.model import RouteInvalid, parse_document, parse_duration, parse_spec, route_spec

EXAMPLE = Path(__file__).parents[2] / "examples" / "support-chat.yaml"


def example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return doc


def problems_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(RouteInvalid) as info:
        parse_spec(spec, name="r", namespace="ns")
    return [str(p) for p in info.value.problems]


def test_example_parses_with_every_field() -> None:
    route = parse_document(example())
    assert route.key == "shop/support-chat"
    assert route.models == ("chat",)
    assert [b.name for b in route.backends] == ["gpt41", "claude", "deepseek"]
    assert route.priorities["critical"].timeout == 0.5
    assert route.priorities["critical"].hedge is True
    assert route.priorities["batch"].max_concurrency == 10
    assert route.priorities["batch"].strategy == "cost"
    assert route.backend("gpt41").price.cached_input_per_mtok == 2.0
    assert route.backend("claude").price.cache_write_per_mtok == 3.75
    assert route.backend("gpt41").price.cache_write_per_mtok is None
    assert route.backend("gpt41").load_sensitive  # maxConcurrency makes latency load-dependent
    assert not route.backend("deepseek").load_sensitive
    assert route.outlier_detection.base_ejection_time == 30.0
    assert route.selects({"app": "storefront", "tier": "web"})
    assert not route.selects({"app": "other"})


def test_canonical_spec_round_trips() -> None:
    route = parse_document(example())
    again = parse_spec(route_spec(route), name=route.name, namespace=route.namespace)
    assert again == route


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.update(models=[]), "spec.models: [] should be non-empty"),
        (lambda s: s["backends"][1].update(name="gpt41"), "spec.backends[1].name: duplicate backend name 'gpt41'"),
        (lambda s: s.update(fallback=["nope"]), "spec.fallback[0]: unknown backend 'nope'"),
        (lambda s: s["priorities"]["normal"].update(timeout="2 seconds"), "spec.priorities.normal.timeout"),
        (lambda s: s["priorities"]["normal"].update(timeout="0s"), "spec.priorities.normal.timeout: must be greater"),
        (lambda s: s["backends"][0].update(provider="bard"), "spec.backends[0].provider: 'bard' is not one of"),
        (lambda s: s["backends"][0].update(quality=101), "spec.backends[0].quality: 101 is greater than"),
        (lambda s: s["backends"][0].update(apiKeyEnv="KEY"), "spec.backends[0]: set at most one of"),
        (lambda s: s["backends"][0].update(nmae="x"), "spec.backends[0]: unknown field ('nmae' was unexpected)"),
        (lambda s: s.update(models=["chat", "chat"]), "spec.models[1]: duplicate model name 'chat'"),
        (lambda s: s["backends"][0].update(url="api.openai.com"), "spec.backends[0].url"),
        (
            lambda s: s["backends"][1].update(capabilities=["tools", "json"]),
            "spec.backends[1].capabilities[1]: provider anthropic cannot serve 'json' requests",
        ),
    ],
)
def test_invalid_specs_name_field_and_problem(mutate: Any, expected: str) -> None:
    spec = copy.deepcopy(example()["spec"])
    mutate(spec)
    assert any(expected in p for p in problems_of(spec)), problems_of(spec)


def test_every_problem_is_reported_not_only_the_first() -> None:
    spec = copy.deepcopy(example()["spec"])
    spec["fallback"] = ["nope"]
    spec["backends"][2]["name"] = "claude"
    found = problems_of(spec)
    assert len(found) >= 2, found


def test_document_envelope_is_checked() -> None:
    with pytest.raises(RouteInvalid) as info:
        parse_document({"apiVersion": "v1", "kind": "LLMRoute", "metadata": {}, "spec": {}})
    text = str(info.value)
    assert "apiVersion" in text and "metadata.name: is required" in text


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1m30s", 90.0), ("1.5s", 1.5), ("1h", 3600.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "ms", "2 s", "-1s", "1d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_apis_default_by_provider_and_stay_within_what_the_provider_serves() -> None:
    route = parse_document(example())
    assert route.backend("gpt41").apis == {"chat"}
    assert route.backend("claude").apis == {"messages"}
    spec = example()["spec"]
    spec["backends"][0]["apis"] = ["chat", "messages", "chat"]
    spec["backends"][1]["apis"] = ["chat"]
    assert problems_of(spec) == [
        "spec.backends[0].apis[1]: provider openai cannot serve the messages API",
        "spec.backends[0].apis[2]: 'chat' is listed twice",
        "spec.backends[1].apis[0]: provider anthropic cannot serve the chat API",
    ]


def test_a_route_never_mixes_embedding_models() -> None:
    spec = example()["spec"]
    spec["backends"][0]["apis"] = ["chat", "embeddings"]
    spec["backends"][2]["apis"] = ["embeddings"]
    [problem] = problems_of(spec)
    assert problem.startswith("spec.backends[2].model: serves embeddings with model 'deepseek-chat', but")
    assert "spec.backends[0] serves them with 'gpt-4.1'" in problem
    spec["backends"][2]["model"] = spec["backends"][0]["model"]
    assert parse_spec(spec, name="r", namespace="ns").backend("deepseek").apis == {"embeddings"}


def test_stream_idle_bounds_are_durations_with_min_at_most_max() -> None:
    spec = example()["spec"]
    spec["priorities"]["normal"] = {"timeout": "2s", "streamIdle": {"min": "5s", "max": "1s"}}
    assert problems_of(spec) == ["spec.priorities.normal.streamIdle: min must not be greater than max"]
    spec["priorities"]["normal"]["streamIdle"] = {"min": "500ms", "max": "10s"}
    normal = parse_spec(spec, name="r", namespace="ns").priorities["normal"]
    assert (normal.stream_idle_min, normal.stream_idle_max) == (0.5, 10.0)
    assert route_spec(parse_spec(spec, name="r", namespace="ns"))["priorities"]["normal"]["streamIdle"] == {
        "min": "500ms",
        "max": "10s",
    }
