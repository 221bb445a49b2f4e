"""The LLMPolicy OpenAPI v3 schema: the one source of truth for its CRD and for the policy parser.

Built like the LLMRoute schema (`schema.py`): `llmroute crd` renders the CustomResourceDefinition from
it, and `llmroute.model.policy_parse` checks every document against it, then checks its CEL rules again
in Python, so the API server and a local sidecar refuse the same policies.
"""

from __future__ import annotations

from typing import Any

from .schema import CONDITIONS, DNS_LABEL, PRIORITIES, PROVIDERS, _integer, _number, crd_manifest, workload_selector

KIND = "LLMPolicy"
PLURAL = "llmpolicies"
SHORT_NAMES = ["llmp"]

ACTIONS = ["Reject", "Downgrade", "Observe"]
PASSTHROUGH = ["Allow", "Deny"]
BUDGET_STATES = ["Ok", "Downgraded", "Exhausted"]
MAX_LIMITS = 16
MAX_WINDOW_SECONDS = 31 * 86400
WINDOW_PATTERN = r"^([1-9][0-9]{0,4}m|[1-9][0-9]{0,2}h|([1-9]|[12][0-9]|3[01])d)$"
"""Whole minutes, hours or days (at most 31d; the parser also bounds minutes and hours by 31d)."""


def _name(description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": 63, "pattern": DNS_LABEL, "description": description}


BUDGET = {
    "type": "object",
    "description": "USD spent per window, charged at the cost sidecars report in x-llmroute-cost-usd.",
    "required": ["name", "window", "limitUSD"],
    "additionalProperties": False,
    "properties": {
        "name": _name("DNS-label name, unique among the policy's budgets; shown in metrics, headers and status."),
        "window": {
            "type": "string",
            "maxLength": 8,
            "pattern": WINDOW_PATTERN,
            "description": (
                "Tumbling window aligned to UTC, 1m to 31d: minutes (m), hours (h) or days (d). 1d is the UTC"
                " day; 30d and 31d are the UTC calendar month, whatever its length."
            ),
        },
        "limitUSD": _number("Most USD spent in one window.", 0),
        "action": {
            "type": "string",
            "enum": ACTIONS,
            "description": (
                "Over the limit: Reject (429 budget_exceeded, the default), Downgrade (only backends at most"
                " downgrade.maxPricePerMTok) or Observe (count only, never refuse)."
            ),
        },
        "downgrade": {
            "type": "object",
            "description": "What action Downgrade still allows once the budget is spent.",
            "required": ["maxPricePerMTok"],
            "additionalProperties": False,
            "properties": {
                "maxPricePerMTok": _number("Backends whose (input + output) / 2 USD per MTok is at most this.", 0),
            },
        },
        "workloadSelector": workload_selector("Only requests from these pods count against the budget; empty: all."),
        "routes": {
            "type": "array",
            "maxItems": 64,
            "items": _name("An LLMRoute name of the namespace."),
            "description": "Only requests to these LLMRoutes count against the budget; empty: every route.",
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "(self.action == 'Downgrade') == has(self.downgrade)",
            "message": "set downgrade exactly when action is Downgrade",
        },
    ],
}

RATE_LIMIT = {
    "type": "object",
    "description": "Requests and tokens per UTC minute.",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": _name("DNS-label name, unique among the policy's rate limits; shown in metrics, headers and status."),
        "requestsPerMinute": _integer("Most requests per UTC minute.", 0, 1_000_000_000),
        "tokensPerMinute": _integer("Most prompt plus completion tokens per UTC minute.", 0, 1_000_000_000_000),
        "priorities": {
            "type": "array",
            "maxItems": len(PRIORITIES),
            "items": {"type": "string", "enum": PRIORITIES},
            "description": "Only requests of these priority classes (x-llmroute-priority) count; empty: every class.",
        },
        "workloadSelector": workload_selector("Only requests from these pods count; empty: all."),
    },
    "x-kubernetes-validations": [
        {
            "rule": "has(self.requestsPerMinute) || has(self.tokensPerMinute)",
            "message": "set requestsPerMinute, tokensPerMinute or both",
        },
    ],
}

SPEC = {
    "type": "object",
    "description": "Budgets, rate limits and allowed backends that every sidecar the policy applies to enforces.",
    "additionalProperties": False,
    "properties": {
        "tier": {
            "type": "string",
            "maxLength": 63,
            "description": "Free-form label (the platform's budget tier), shown in status and metrics.",
        },
        "budgets": {
            "type": "array",
            "maxItems": MAX_LIMITS,
            "items": BUDGET,
            "description": "USD limits per window; a request must fit every budget that applies to it.",
        },
        "rateLimits": {
            "type": "array",
            "maxItems": MAX_LIMITS,
            "items": RATE_LIMIT,
            "description": "Requests and tokens per minute; a request must fit every rate limit that applies to it.",
        },
        "allowed": {
            "type": "object",
            "description": (
                "What LLMRoutes may use at all; a route with a backend outside it is refused (PolicyViolation)."
                " Lists of several policies intersect."
            ),
            "additionalProperties": False,
            "properties": {
                "providers": {
                    "type": "array",
                    "maxItems": len(PROVIDERS),
                    "items": {"type": "string", "enum": PROVIDERS},
                    "description": "Providers backends may use; empty: any.",
                },
                "hosts": {
                    "type": "array",
                    "maxItems": 64,
                    "items": {
                        "type": "string",
                        "maxLength": 253,
                        "pattern": r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?$",
                    },
                    "description": "Host names of backend URLs, `*.example.com` matching any subdomain; empty: any.",
                },
                "maxPricePerMTok": _number("Highest (input + output) / 2 USD per million tokens of a backend.", 0),
            },
        },
        "passthrough": {
            "type": "string",
            "enum": PASSTHROUGH,
            "description": "Allow (default) or Deny requests for unknown models and paths passed through unrouted.",
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "!has(self.budgets) || self.budgets.all(b, self.budgets.exists_one(c, c.name == b.name))",
            "message": "budget names must be unique",
        },
        {
            "rule": "!has(self.rateLimits) || self.rateLimits.all(r, self.rateLimits.exists_one(s, s.name == r.name))",
            "message": "rate limit names must be unique",
        },
    ],
}

BUDGET_STATUS = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "windowStart": {"type": "string", "format": "date-time"},
        "spentUSD": {"type": "number"},
        "limitUSD": {"type": "number"},
        "remainingUSD": {"type": "number"},
        "state": {"type": "string", "enum": BUDGET_STATES},
    },
}

RATE_LIMIT_STATUS = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "requestsLastMinute": {"type": "integer"},
        "tokensLastMinute": {"type": "integer"},
    },
}

STATUS = {
    "type": "object",
    "description": "What the operator and the sidecars observed.",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "conditions": CONDITIONS,
        "tier": {"type": "string"},
        "budgetState": {
            "type": "string",
            "description": "The worst state of the budgets (Exhausted, then Downgraded, then Ok).",
        },
        "spentUSD": {"type": "number", "description": "Spent in the current window of the budget nearest its limit."},
        "limitUSD": {"type": "number", "description": "The limit of the budget nearest its limit."},
        "budgets": {"type": "array", "items": BUDGET_STATUS},
        "rateLimits": {"type": "array", "items": RATE_LIMIT_STATUS},
    },
}

PRINTER_COLUMNS = [
    {"name": "Tier", "type": "string", "jsonPath": ".spec.tier"},
    {"name": "Budget state", "type": "string", "jsonPath": ".status.budgetState"},
    {"name": "Spent", "type": "number", "jsonPath": ".status.spentUSD", "description": "USD, budget nearest its limit"},
    {"name": "Limit", "type": "number", "jsonPath": ".status.limitUSD", "description": "USD, budget nearest its limit"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def policy_crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest for LLMPolicy."""
    return crd_manifest(
        kind=KIND,
        plural=PLURAL,
        short_names=SHORT_NAMES,
        description="A namespace's budgets, rate limits and allowed backends, enforced by every sidecar there.",
        spec=SPEC,
        status=STATUS,
        printer_columns=PRINTER_COLUMNS,
    )
