"""Compile validated routes into one routing table with a deterministic version.

The same compiler serves the local sidecar (routes from files) and the operator (routes of a
namespace), so both agree on conflicts and versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .durations import format_duration
from .parse import Problem, RouteInvalid
from .spec import Backend, Route, SecretValue

# Given a backend that names a key (apiKeySecretRef or apiKeyEnv) and its namespace, return the key;
# raise LookupError with a message a person can act on when it cannot be found.
KeyResolver = Callable[[Backend, str], SecretValue | None]


def route_spec(route: Route) -> dict[str, Any]:
    """The route as a canonical LLMRoute spec (defaults filled in, no secrets): for debug output and hashing."""
    backends = []
    for b in route.backends:
        raw: dict[str, Any] = {
            "name": b.name,
            "provider": b.provider,
            "url": b.url,
            "model": b.model,
            "price": {"inputPerMTok": b.price.input_per_mtok, "outputPerMTok": b.price.output_per_mtok},
            "quality": b.quality,
            "capabilities": sorted(b.capabilities),
            "apis": sorted(b.apis),
            "weight": b.weight,
            "selfHosted": b.self_hosted,
        }
        if b.price.cached_input_per_mtok is not None:
            raw["price"]["cachedInputPerMTok"] = b.price.cached_input_per_mtok
        if b.price.cache_write_per_mtok is not None:
            raw["price"]["cacheWritePerMTok"] = b.price.cache_write_per_mtok
        if b.max_concurrency is not None:
            raw["maxConcurrency"] = b.max_concurrency
        if b.context_window is not None:
            raw["contextWindow"] = b.context_window
        if b.provider == "azure-openai":
            raw["apiVersion"] = b.api_version
        if b.api_key_secret_ref is not None:
            raw["apiKeySecretRef"] = {"name": b.api_key_secret_ref.name, "key": b.api_key_secret_ref.key}
        if b.api_key_env is not None:
            raw["apiKeyEnv"] = b.api_key_env
        backends.append(raw)
    priorities: dict[str, Any] = {}
    for name, policy in sorted(route.priorities.items()):
        entry: dict[str, Any] = {"timeout": format_duration(policy.timeout), "hedge": policy.hedge}
        if policy.max_concurrency is not None:
            entry["maxConcurrency"] = policy.max_concurrency
        if policy.strategy is not None:
            entry["strategy"] = policy.strategy
        idle = {
            bound: format_duration(value)
            for bound, value in (("min", policy.stream_idle_min), ("max", policy.stream_idle_max))
            if value is not None
        }
        if idle:
            entry["streamIdle"] = idle
        priorities[name] = entry
    spec: dict[str, Any] = {
        "models": list(route.models),
        "strategy": route.strategy,
        "weights": {"latency": route.weights.latency, "cost": route.weights.cost, "quality": route.weights.quality},
        "backends": backends,
        "fallback": list(route.fallback),
        "priorities": priorities,
        "retry": {
            "attempts": route.retry.attempts,
            "budgetPercent": route.retry.retry_budget_percent,
            "retryOn": sorted(route.retry.retry_on),
        },
        "outlierDetection": {
            "consecutiveFailures": route.outlier_detection.consecutive_failures,
            "baseEjectionTime": format_duration(route.outlier_detection.base_ejection_time),
            "maxEjectionPercent": route.outlier_detection.max_ejection_percent,
        },
    }
    if route.workload_selector:
        spec["workloadSelector"] = {"matchLabels": dict(sorted(route.workload_selector.items()))}
    if route.system_prompts:
        spec["systemPrompts"] = dict(sorted(route.system_prompts.items()))
    return spec


def _key_fingerprint(backend: Backend) -> str:
    """A short hash of the key, so a rotated key changes the table version without the key entering it."""
    if backend.api_key is None:
        return ""
    return hashlib.sha256(backend.api_key.reveal().encode()).hexdigest()[:16]


def table_version(routes: Iterable[Route]) -> str:
    """Deterministic version: the same routes and keys always give the same string."""
    canonical = [
        {
            "route": r.key,
            "spec": route_spec(r),
            "keys": [_key_fingerprint(b) for b in r.backends],
        }
        for r in sorted(routes, key=lambda r: r.key)
    ]
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The routes one sidecar serves, looked up by model name. Immutable: a reload builds a new one."""

    version: str
    routes: tuple[Route, ...]
    by_model: dict[str, Route] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_model.update({model: route for route in self.routes for model in route.models})

    @property
    def models(self) -> list[str]:
        """Every model name an app may send."""
        return sorted(self.by_model)


EMPTY_TABLE = RoutingTable(version="", routes=())


@dataclass(frozen=True, slots=True)
class CompileResult:
    """A table plus the routes left out of it and why (keyed by `namespace/name`)."""

    table: RoutingTable
    rejected: dict[str, list[Problem]]


def resolve_keys(route: Route, resolver: KeyResolver) -> Route:
    """Fill each backend's api_key; raise RouteInvalid naming every key that cannot be found."""
    problems = []
    backends = []
    for i, backend in enumerate(route.backends):
        if backend.api_key_secret_ref is None and backend.api_key_env is None:
            backends.append(backend)
            continue
        field_name = "apiKeySecretRef" if backend.api_key_secret_ref is not None else "apiKeyEnv"
        try:
            backends.append(replace(backend, api_key=resolver(backend, route.namespace)))
        except LookupError as exc:
            problems.append(Problem(f"spec.backends[{i}].{field_name}", str(exc.args[0] if exc.args else exc)))
    if problems:
        raise RouteInvalid(route.key, problems)
    return replace(route, backends=tuple(backends))


def compile_table(routes: Iterable[Route], resolver: KeyResolver | None = None) -> CompileResult:
    """Build one table from routes given in precedence order (first wins a contested model name).

    A route that claims a model an earlier route already serves, or whose keys cannot be resolved,
    is left out and reported, the way Gateway API reports a conflicting route as not accepted.
    """
    accepted: list[Route] = []
    rejected: dict[str, list[Problem]] = {}
    owner: dict[str, str] = {}
    for route in routes:
        conflicts = [
            Problem(f"spec.models[{i}]", f"model {m!r} is already served by LLMRoute {owner[m]}")
            for i, m in enumerate(route.models)
            if m in owner
        ]
        if conflicts:
            rejected[route.key] = conflicts
            continue
        if resolver is not None:
            try:
                route = resolve_keys(route, resolver)
            except RouteInvalid as exc:
                rejected[route.key] = exc.problems
                continue
        accepted.append(route)
        owner.update({m: route.key for m in route.models})
    ordered = tuple(sorted(accepted, key=lambda r: r.key))
    return CompileResult(RoutingTable(version=table_version(ordered), routes=ordered), rejected)
