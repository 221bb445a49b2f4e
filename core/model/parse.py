"""Turn an LLMRoute document (a dict from YAML or the API server) into a validated `Route`.

Every problem names the field it is about (`spec.backends[1].name: ...`), first the schema's, then
the rules the schema states as CEL and the parser checks here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import jsonschema

from .durations import DURATION_PATTERN, parse_duration
from .policy_schema import WINDOW_PATTERN
from .schema import DNS_LABEL, ENV_NAME, GROUP, KIND, SPEC, VERSION
from .spec import (
    DEFAULT_AZURE_API_VERSION,
    DEFAULT_PRIORITIES,
    NATIVE_APIS,
    PROVIDER_LACKS,
    Backend,
    OutlierDetection,
    Price,
    Priority,
    PriorityPolicy,
    Provider,
    RetryOn,
    RetryPolicy,
    Route,
    SecretRef,
    Strategy,
    Weights,
)

API_VERSION = f"{GROUP}/{VERSION}"
_VALIDATOR = jsonschema.Draft7Validator(SPEC)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a document is invalid, with the path of the field at fault."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RouteInvalid(ValueError):
    """An LLMRoute failed validation; `problems` lists every reason, not just the first."""

    def __init__(self, route: str, problems: list[Problem]) -> None:
        self.route = route
        self.problems = problems
        super().__init__(f"LLMRoute {route} is invalid: " + "; ".join(str(p) for p in problems))


def _json_path(parts: Iterable[str | int]) -> str:
    out = "spec"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


# Messages for patterns, which jsonschema would otherwise report as the bare regular expression.
_PATTERN_MESSAGES = {
    DURATION_PATTERN: "invalid duration {value!r}: expected a number with a unit, such as 500ms, 2s or 1m30s",
    DNS_LABEL: "{value!r} is not a DNS label (lower-case letters, digits and '-', at most 63)",
    ENV_NAME: "{value!r} is not an environment variable name",
    WINDOW_PATTERN: "invalid window {value!r}: expected whole minutes, hours or days from 1m to 31d, such as 1h or 30d",
}


def schema_problems(spec: Any, validator: jsonschema.Draft7Validator = _VALIDATOR) -> list[Problem]:
    """Every way `spec` breaks the schema (the LLMRoute spec's by default), each naming its field."""
    problems = []
    for error in sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.absolute_path))):
        message = error.message
        if error.validator == "additionalProperties":
            message = message.replace("Additional properties are not allowed", "unknown field")
        elif error.validator == "pattern" and error.validator_value in _PATTERN_MESSAGES:
            message = _PATTERN_MESSAGES[error.validator_value].format(value=error.instance)
        problems.append(Problem(_json_path(error.absolute_path), message))
    return problems


def _dicts(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list, so the rules below also run on documents that failed the schema."""
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _rule_problems(spec: Mapping[str, Any]) -> list[Problem]:
    """The CEL rules of the schema and what the schema cannot say, checked in Python."""
    if not isinstance(spec, Mapping):
        return []
    problems = []
    backends = _dicts(spec.get("backends"))
    names = [str(b.get("name")) for b in backends]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            problems.append(Problem(f"spec.backends[{i}].name", f"duplicate backend name {name!r}"))
        seen.add(name)
    fallback = spec.get("fallback")
    for i, target in enumerate(fallback if isinstance(fallback, list) else []):
        if target not in seen:
            problems.append(Problem(f"spec.fallback[{i}]", f"unknown backend {target!r}; backends are {sorted(seen)}"))
    models_seen: set[str] = set()
    models = spec.get("models")
    for i, model in enumerate(models if isinstance(models, list) else []):
        if model in models_seen:
            problems.append(Problem(f"spec.models[{i}]", f"duplicate model name {model!r}"))
        models_seen.add(model)
    problems.extend(_api_problems(backends))
    for i, backend in enumerate(backends):
        if "apiKeySecretRef" in backend and "apiKeyEnv" in backend:
            problems.append(Problem(f"spec.backends[{i}]", "set at most one of apiKeySecretRef and apiKeyEnv"))
        if "apiVersion" in backend and backend.get("provider") != "azure-openai":
            problems.append(Problem(f"spec.backends[{i}].apiVersion", "only applies to provider azure-openai"))
        declared = backend.get("capabilities")
        lacks = PROVIDER_LACKS.get(str(backend.get("provider")), frozenset())
        for j, capability in enumerate(declared if isinstance(declared, list) else []):
            if capability in lacks:
                problems.append(
                    Problem(
                        f"spec.backends[{i}].capabilities[{j}]",
                        f"provider {backend['provider']} cannot serve {capability!r} requests",
                    )
                )
    return problems


def _api_problems(backends: list[Mapping[str, Any]]) -> list[Problem]:
    """`apis` within what the provider's protocol serves, no repeats, and one embedding model per route."""
    problems = []
    embedding_model: tuple[int, str] | None = None
    for i, backend in enumerate(backends):
        provider = str(backend.get("provider"))
        apis = backend.get("apis")
        if not isinstance(apis, list):
            continue
        native = NATIVE_APIS.get(provider, frozenset())
        for j, api in enumerate(apis):
            if api not in native and provider in NATIVE_APIS:
                problems.append(
                    Problem(f"spec.backends[{i}].apis[{j}]", f"provider {provider} cannot serve the {api} API")
                )
            if api in apis[:j]:
                problems.append(Problem(f"spec.backends[{i}].apis[{j}]", f"{api!r} is listed twice"))
        if "embeddings" in apis:
            model = str(backend.get("model"))
            if embedding_model is None:
                embedding_model = (i, model)
            elif model != embedding_model[1]:
                first, other = embedding_model
                problems.append(
                    Problem(
                        f"spec.backends[{i}].model",
                        f"serves embeddings with model {model!r}, but spec.backends[{first}] serves them with"
                        f" {other!r}: vectors of different embedding models are not comparable, so a route"
                        " never fails over between them",
                    )
                )
    return problems


def _duration(value: str, path: str, problems: list[Problem]) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return 0.0
    if seconds <= 0:
        problems.append(Problem(path, "must be greater than zero"))
    return seconds


def _backend(raw: Mapping[str, Any]) -> Backend:
    price = raw.get("price", {})
    ref = raw.get("apiKeySecretRef")
    ca = raw.get("tls", {}).get("caSecretRef")
    return Backend(
        name=raw["name"],
        provider=cast(Provider, raw["provider"]),
        url=raw["url"].rstrip("/"),
        model=raw["model"],
        price=Price(
            input_per_mtok=float(price.get("inputPerMTok", 0.0)),
            output_per_mtok=float(price.get("outputPerMTok", 0.0)),
            cached_input_per_mtok=(float(price["cachedInputPerMTok"]) if "cachedInputPerMTok" in price else None),
            cache_write_per_mtok=(float(price["cacheWritePerMTok"]) if "cacheWritePerMTok" in price else None),
        ),
        quality=int(raw.get("quality", 50)),
        capabilities=frozenset(raw.get("capabilities", ())),
        max_concurrency=raw.get("maxConcurrency"),
        context_window=raw.get("contextWindow"),
        weight=int(raw.get("weight", 1)),
        self_hosted=bool(raw.get("selfHosted", False)),
        api_version=raw.get("apiVersion", DEFAULT_AZURE_API_VERSION),
        apis=frozenset(raw.get("apis", ())),
        api_key_secret_ref=SecretRef(ref["name"], ref["key"]) if ref else None,
        api_key_env=raw.get("apiKeyEnv"),
        ca_secret_ref=SecretRef(ca["name"], ca["key"]) if ca else None,
    )


def _priorities(raw: Mapping[str, Any], problems: list[Problem]) -> dict[Priority, PriorityPolicy]:
    out = dict(DEFAULT_PRIORITIES)
    for name, policy in raw.items():
        default = DEFAULT_PRIORITIES[cast(Priority, name)]
        timeout = default.timeout
        if "timeout" in policy:
            timeout = _duration(policy["timeout"], f"spec.priorities.{name}.timeout", problems)
        idle = policy.get("streamIdle", {})
        bounds = {
            bound: _duration(idle[bound], f"spec.priorities.{name}.streamIdle.{bound}", problems)
            for bound in ("min", "max")
            if bound in idle
        }
        if bounds.get("min", 0.0) > bounds.get("max", float("inf")):
            problems.append(Problem(f"spec.priorities.{name}.streamIdle", "min must not be greater than max"))
        out[cast(Priority, name)] = PriorityPolicy(
            timeout=timeout,
            hedge=bool(policy.get("hedge", default.hedge)),
            max_concurrency=policy.get("maxConcurrency"),
            strategy=cast(Strategy | None, policy.get("strategy")),
            stream_idle_min=bounds.get("min"),
            stream_idle_max=bounds.get("max"),
        )
    return out


def parse_spec(spec: Any, *, name: str, namespace: str, generation: int = 0) -> Route:
    """Validate an LLMRoute `spec` and build the Route; raise RouteInvalid listing every problem."""
    key = f"{namespace}/{name}"
    problems = schema_problems(spec)
    problems += [p for p in _rule_problems(spec) if p not in problems]
    if problems:
        raise RouteInvalid(key, problems)
    priorities = _priorities(spec.get("priorities", {}), problems)
    outlier_raw = spec.get("outlierDetection", {})
    outlier = OutlierDetection()
    base_ejection = outlier.base_ejection_time
    if "baseEjectionTime" in outlier_raw:
        base_ejection = _duration(outlier_raw["baseEjectionTime"], "spec.outlierDetection.baseEjectionTime", problems)
    if problems:
        raise RouteInvalid(key, problems)
    weights = spec.get("weights", {})
    default_weights = Weights()
    retry = spec.get("retry", {})
    defaults = RetryPolicy()
    return Route(
        name=name,
        namespace=namespace,
        generation=generation,
        models=tuple(spec["models"]),
        backends=tuple(_backend(b) for b in spec["backends"]),
        strategy=cast(Strategy, spec.get("strategy", "latency")),
        weights=Weights(
            latency=float(weights.get("latency", default_weights.latency)),
            cost=float(weights.get("cost", default_weights.cost)),
            quality=float(weights.get("quality", default_weights.quality)),
        ),
        fallback=tuple(spec.get("fallback", ())),
        priorities=priorities,
        retry=RetryPolicy(
            attempts=int(retry.get("attempts", defaults.attempts)),
            retry_budget_percent=float(retry.get("budgetPercent", defaults.retry_budget_percent)),
            retry_on=frozenset(cast(list[RetryOn], retry.get("retryOn", sorted(defaults.retry_on)))),
        ),
        outlier_detection=OutlierDetection(
            consecutive_failures=int(outlier_raw.get("consecutiveFailures", outlier.consecutive_failures)),
            base_ejection_time=base_ejection,
            max_ejection_percent=int(outlier_raw.get("maxEjectionPercent", outlier.max_ejection_percent)),
        ),
        workload_selector=dict(spec.get("workloadSelector", {}).get("matchLabels", {})),
        system_prompts=dict(spec.get("systemPrompts", {})),
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a custom resource around its spec: who it is and which generation."""

    name: str
    namespace: str
    generation: int


def document_envelope(doc: Any, kind: str, default_namespace: str) -> tuple[str, Envelope | None, list[Problem]]:
    """Check apiVersion, kind, metadata.name and spec; the key `namespace/name` names the document in problems."""
    if not isinstance(doc, Mapping):
        return "?", None, [Problem("", f"expected an {kind} object, got {type(doc).__name__}")]
    metadata = doc.get("metadata") or {}
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    namespace = (metadata.get("namespace") if isinstance(metadata, Mapping) else None) or default_namespace
    key = f"{namespace}/{name or '?'}"
    problems = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"expected {API_VERSION!r}, got {doc.get('apiVersion')!r}"))
    if doc.get("kind") != kind:
        problems.append(Problem("kind", f"expected {kind!r}, got {doc.get('kind')!r}"))
    if not isinstance(name, str) or not name:
        problems.append(Problem("metadata.name", "is required"))
    if "spec" not in doc:
        problems.append(Problem("spec", "is required"))
    if problems:
        return key, None, problems
    return key, Envelope(cast(str, name), namespace, int(metadata.get("generation", 0) or 0)), []


def parse_document(doc: Any, *, default_namespace: str = "default") -> Route:
    """Validate a whole LLMRoute object (apiVersion, kind, metadata, spec)."""
    key, envelope, problems = document_envelope(doc, KIND, default_namespace)
    if envelope is None:
        raise RouteInvalid(key, problems)
    return parse_spec(doc["spec"], name=envelope.name, namespace=envelope.namespace, generation=envelope.generation)
