"""Turn an LLMPolicy document (a dict from YAML or the API server) into a validated `Policy`.

As for LLMRoutes, every problem names its field: first the schema's, then the schema's CEL rules and
what a schema cannot say (a window's upper bound), checked here in Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import jsonschema

from .parse import Problem, _dicts, document_envelope, schema_problems
from .policy import MONTH_DAYS, Action, Allowed, Budget, Passthrough, Policy, RateLimit, Selector, Window
from .policy_schema import KIND, MAX_WINDOW_SECONDS, SPEC
from .spec import Priority

_VALIDATOR = jsonschema.Draft7Validator(SPEC)
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


class PolicyInvalid(ValueError):
    """An LLMPolicy failed validation; `problems` lists every reason, not just the first."""

    def __init__(self, policy: str, problems: list[Problem]) -> None:
        self.policy = policy
        self.problems = problems
        super().__init__(f"LLMPolicy {policy} is invalid: " + "; ".join(str(p) for p in problems))


def parse_window(text: str) -> Window:
    """`1h` -> a 3600 s window; `30d` and `31d` -> the UTC calendar month. Raise ValueError past 31d."""
    count, unit = int(text[:-1]), text[-1]
    seconds = count * _UNIT_SECONDS[unit]
    if seconds > MAX_WINDOW_SECONDS:
        raise ValueError(f"window {text!r} is longer than 31d (use 30d or 31d for the calendar month)")
    return Window(seconds, calendar_month=unit == "d" and count in MONTH_DAYS)


def _unique(items: list[Mapping[str, Any]], field: str, what: str) -> list[Problem]:
    seen: set[Any] = set()
    problems = []
    for i, item in enumerate(items):
        if item.get("name") in seen:
            problems.append(Problem(f"spec.{field}[{i}].name", f"duplicate {what} name {item.get('name')!r}"))
        seen.add(item.get("name"))
    return problems


def _rule_problems(spec: Any) -> list[Problem]:
    """The CEL rules of the schema, and the window bound, checked in Python."""
    if not isinstance(spec, Mapping):
        return []
    budgets, limits = _dicts(spec.get("budgets")), _dicts(spec.get("rateLimits"))
    problems = _unique(budgets, "budgets", "budget") + _unique(limits, "rateLimits", "rate limit")
    for i, budget in enumerate(budgets):
        if (budget.get("action") == "Downgrade") != ("downgrade" in budget):
            problems.append(Problem(f"spec.budgets[{i}]", "set downgrade exactly when action is Downgrade"))
        window = budget.get("window")
        if isinstance(window, str) and window[:-1].isdigit() and window[-1:] in _UNIT_SECONDS:
            try:
                parse_window(window)
            except ValueError as exc:
                problems.append(Problem(f"spec.budgets[{i}].window", str(exc)))
    for i, limit in enumerate(limits):
        if "requestsPerMinute" not in limit and "tokensPerMinute" not in limit:
            problems.append(Problem(f"spec.rateLimits[{i}]", "set requestsPerMinute, tokensPerMinute or both"))
    return problems


def _selector(raw: Mapping[str, Any]) -> Selector:
    return Selector(dict(raw.get("workloadSelector", {}).get("matchLabels", {})))


def _budget(raw: Mapping[str, Any]) -> Budget:
    downgrade = raw.get("downgrade")
    return Budget(
        name=raw["name"],
        window=parse_window(raw["window"]),
        limit_usd=float(raw["limitUSD"]),
        action=cast(Action, raw.get("action", "Reject")),
        downgrade_max_price_per_mtok=float(downgrade["maxPricePerMTok"]) if downgrade else None,
        workload_selector=_selector(raw),
        routes=frozenset(raw.get("routes", ())),
    )


def _rate_limit(raw: Mapping[str, Any]) -> RateLimit:
    return RateLimit(
        name=raw["name"],
        requests_per_minute=raw.get("requestsPerMinute"),
        tokens_per_minute=raw.get("tokensPerMinute"),
        priorities=frozenset(cast(list[Priority], raw.get("priorities", ()))),
        workload_selector=_selector(raw),
    )


def parse_policy_spec(spec: Any, *, name: str, namespace: str, generation: int = 0) -> Policy:
    """Validate an LLMPolicy `spec` and build the Policy; raise PolicyInvalid listing every problem."""
    problems = schema_problems(spec, _VALIDATOR)
    problems += [p for p in _rule_problems(spec) if p not in problems]
    if problems:
        raise PolicyInvalid(f"{namespace}/{name}", problems)
    allowed = spec.get("allowed", {})
    price = allowed.get("maxPricePerMTok")
    return Policy(
        namespace=namespace,
        name=name,
        generation=generation,
        tier=str(spec.get("tier", "")),
        budgets=tuple(_budget(b) for b in spec.get("budgets", ())),
        rate_limits=tuple(_rate_limit(r) for r in spec.get("rateLimits", ())),
        allowed=Allowed(
            providers=frozenset(allowed.get("providers", ())),
            hosts=tuple(allowed.get("hosts", ())),
            max_price_per_mtok=float(price) if price is not None else None,
        ),
        passthrough=cast(Passthrough, spec.get("passthrough", "Allow")),
    )


def parse_policy_document(doc: Any, *, default_namespace: str = "default") -> Policy:
    """Validate a whole LLMPolicy object (apiVersion, kind, metadata, spec)."""
    key, envelope, problems = document_envelope(doc, KIND, default_namespace)
    if envelope is None:
        raise PolicyInvalid(key, problems)
    return parse_policy_spec(
        doc["spec"], name=envelope.name, namespace=envelope.namespace, generation=envelope.generation
    )


def window_text(window: Window) -> str:
    """The window as a spec writes it, in its largest whole unit (30d and 31d stay the calendar month)."""
    for unit in ("d", "h", "m"):
        if window.seconds % _UNIT_SECONDS[unit] == 0:
            return f"{window.seconds // _UNIT_SECONDS[unit]}{unit}"
    raise ValueError(f"a window of {window.seconds} s is not whole minutes")


def _selector_spec(selector: Selector) -> dict[str, Any]:
    return {"matchLabels": dict(sorted(selector.match_labels.items()))} if selector.match_labels else {}


def policy_spec(policy: Policy) -> dict[str, Any]:
    """The policy as a canonical LLMPolicy spec (defaults filled in): what the operator sends sidecars.

    parse_policy_spec(policy_spec(p)) == p, so a sidecar parses exactly what the operator accepted."""
    budgets = []
    for b in policy.budgets:
        raw: dict[str, Any] = {"name": b.name, "window": window_text(b.window), "limitUSD": b.limit_usd}
        raw["action"] = b.action
        if b.downgrade_max_price_per_mtok is not None:
            raw["downgrade"] = {"maxPricePerMTok": b.downgrade_max_price_per_mtok}
        if b.workload_selector.match_labels:
            raw["workloadSelector"] = _selector_spec(b.workload_selector)
        if b.routes:
            raw["routes"] = sorted(b.routes)
        budgets.append(raw)
    limits = []
    for r in policy.rate_limits:
        raw = {"name": r.name}
        if r.requests_per_minute is not None:
            raw["requestsPerMinute"] = r.requests_per_minute
        if r.tokens_per_minute is not None:
            raw["tokensPerMinute"] = r.tokens_per_minute
        if r.priorities:
            raw["priorities"] = sorted(r.priorities)
        if r.workload_selector.match_labels:
            raw["workloadSelector"] = _selector_spec(r.workload_selector)
        limits.append(raw)
    allowed: dict[str, Any] = {}
    if policy.allowed.providers:
        allowed["providers"] = sorted(policy.allowed.providers)
    if policy.allowed.hosts:
        allowed["hosts"] = list(policy.allowed.hosts)
    if policy.allowed.max_price_per_mtok is not None:
        allowed["maxPricePerMTok"] = policy.allowed.max_price_per_mtok
    return {
        "tier": policy.tier,
        "budgets": budgets,
        "rateLimits": limits,
        "allowed": allowed,
        "passthrough": policy.passthrough,
    }
