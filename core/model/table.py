"""Compile validated routes into one routing table with a deterministic version.

The same compiler serves the local sidecar (routes from files) and the operator (routes of a
namespace), so both agree on conflicts and versions.
"""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .durations import format_duration
from .parse import Problem, RouteInvalid
from .spec import Backend, Route, SecretValue

# Given a backend that names a key (apiKeySecretRef or apiKeyEnv) and its namespace, return the key;
# raise LookupError with a message a person can act on when it cannot be found.
KeyResolver = Callable[[Backend, str], SecretValue | None]
# Given a backend that names a CA bundle (tls.caSecretRef) and its namespace, return the PEM; LookupError as above.
CaResolver = Callable[[Backend, str], SecretValue]


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
        if b.ca_secret_ref is not None:
            raw["tls"] = {"caSecretRef": {"name": b.ca_secret_ref.name, "key": b.ca_secret_ref.key}}
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


def _fingerprint(value: SecretValue | None) -> str:
    """A short hash of a key or CA bundle, so a rotated one changes the table version without entering it."""
    if value is None:
        return ""
    return hashlib.sha256(value.reveal().encode()).hexdigest()[:16]


def table_version(routes: Iterable[Route]) -> str:
    """Deterministic version: the same routes and keys always give the same string."""
    canonical = []
    for r in sorted(routes, key=lambda r: r.key):
        entry: dict[str, Any] = {
            "route": r.key,
            "spec": route_spec(r),
            "keys": [_fingerprint(b.api_key) for b in r.backends],
        }
        if any(b.ca_bundle is not None for b in r.backends):  # only then: other tables keep their versions
            entry["cas"] = [_fingerprint(b.ca_bundle) for b in r.backends]
        canonical.append(entry)
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


def valid_ca_bundle(pem: SecretValue) -> bool:
    """Whether `pem` holds at least one PEM certificate that OpenSSL accepts as a CA."""
    try:
        ssl.create_default_context(cadata=pem.reveal())
    except (ssl.SSLError, ValueError):
        return False
    return True


def resolve_keys(route: Route, resolver: KeyResolver, ca_resolver: CaResolver | None = None) -> Route:
    """Fill each backend's api_key (and, given `ca_resolver`, its ca_bundle); raise RouteInvalid naming every key
    or CA bundle that cannot be found or is not PEM."""
    problems = []
    backends = []
    for i, backend in enumerate(route.backends):
        if backend.api_key_secret_ref is not None or backend.api_key_env is not None:
            field_name = "apiKeySecretRef" if backend.api_key_secret_ref is not None else "apiKeyEnv"
            try:
                backend = replace(backend, api_key=resolver(backend, route.namespace))
            except LookupError as exc:
                problems.append(Problem(f"spec.backends[{i}].{field_name}", str(exc.args[0] if exc.args else exc)))
        ref = backend.ca_secret_ref
        if ref is not None and ca_resolver is not None:
            path = f"spec.backends[{i}].tls.caSecretRef"
            try:
                pem = ca_resolver(backend, route.namespace)
            except LookupError as exc:
                problems.append(Problem(path, str(exc.args[0] if exc.args else exc)))
            else:
                if valid_ca_bundle(pem):
                    backend = replace(backend, ca_bundle=pem)
                else:
                    why = f"Secret {ref.name!r} key {ref.key!r} holds no valid PEM certificate"
                    problems.append(Problem(path, why))
        backends.append(backend)
    if problems:
        raise RouteInvalid(route.key, problems)
    return replace(route, backends=tuple(backends))


def compile_table(
    routes: Iterable[Route], resolver: KeyResolver | None = None, ca_resolver: CaResolver | None = None
) -> CompileResult:
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
                route = resolve_keys(route, resolver, ca_resolver)
            except RouteInvalid as exc:
                rejected[route.key] = exc.problems
                continue
        accepted.append(route)
        owner.update({m: route.key for m in route.models})
    ordered = tuple(sorted(accepted, key=lambda r: r.key))
    return CompileResult(RoutingTable(version=table_version(ordered), routes=ordered), rejected)
