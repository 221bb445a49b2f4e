"""The LLMRoute OpenAPI v3 schema: the one source of truth for the CRD and for the parser.

`llmroute crd` renders the CustomResourceDefinition from it, and `llmroute.model.parse` checks every
document against it before the semantic checks, so the API server and a local sidecar reject the same
things. CEL rules (`x-kubernetes-validations`) say what a structural schema cannot; the parser checks
the same rules in Python.
"""

from __future__ import annotations

from typing import Any

from .durations import DURATION_PATTERN

GROUP = "llmroute.io"
VERSION = "v1alpha1"
KIND = "LLMRoute"
PLURAL = "llmroutes"
SHORT_NAMES = ["llmr"]

STRATEGIES = ["latency", "score", "cost", "ordered", "weighted"]
PROVIDERS = ["openai", "anthropic", "azure-openai"]
CAPABILITIES = ["tools", "vision", "json", "prefill"]
APIS = ["chat", "messages", "responses", "embeddings", "completions"]
_SECRET_NAME = {"type": "string", "minLength": 1, "maxLength": 253, "description": "Secret name."}
_SECRET_KEY = {"type": "string", "minLength": 1, "maxLength": 253, "description": "Key in the Secret."}
PRIORITIES = ["critical", "normal", "batch"]
RETRY_ON = ["connect-failure", "reset", "5xx", "429", "timeout"]

MAX_BACKENDS = 32
MAX_MODELS = 32
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


def _duration(description: str) -> dict[str, Any]:
    return {"type": "string", "maxLength": 32, "pattern": DURATION_PATTERN, "description": description}


def _number(description: str, minimum: float, maximum: float | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number", "minimum": minimum, "description": description}
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


def _integer(description: str, minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum, "description": description}


def workload_selector(description: str) -> dict[str, Any]:
    """A `workloadSelector`: labels a pod must all have (LLMRoute and LLMPolicy limits share it)."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": {
            "matchLabels": {
                "type": "object",
                "maxProperties": 64,
                "additionalProperties": {"type": "string", "maxLength": 63},
                "description": "Labels a pod must all have.",
            },
        },
    }


def _strategy(description: str) -> dict[str, Any]:
    return {"type": "string", "enum": STRATEGIES, "description": description}


PRICE = {
    "type": "object",
    "description": "Price in USD per million tokens, used for cost routing and spend accounting.",
    "additionalProperties": False,
    "properties": {
        "inputPerMTok": _number("USD per million prompt tokens.", 0),
        "outputPerMTok": _number("USD per million completion tokens.", 0),
        "cachedInputPerMTok": _number("USD per million cached prompt tokens; defaults to inputPerMTok.", 0),
        "cacheWritePerMTok": _number(
            "USD per million prompt tokens written to the provider's cache; defaults to inputPerMTok.", 0
        ),
    },
}

BACKEND = {
    "type": "object",
    "description": "One LLM API the route may send requests to.",
    "required": ["name", "provider", "url", "model"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 63,
            "pattern": DNS_LABEL,
            "description": "DNS-label name, unique in the route; shown in headers, metrics and status.",
        },
        "provider": {
            "type": "string",
            "enum": PROVIDERS,
            "description": "Wire protocol: openai (any OpenAI-compatible API), anthropic or azure-openai.",
        },
        "url": {
            "type": "string",
            "maxLength": 2048,
            "pattern": r"^https?://[^\s]+$",
            "description": "Base URL of the API, e.g. https://api.openai.com/v1.",
        },
        "model": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Model name sent upstream."},
        "apiVersion": {
            "type": "string",
            "maxLength": 32,
            "description": "azure-openai only: the api-version query parameter (default 2024-10-21).",
        },
        "apiKeySecretRef": {
            "type": "object",
            "description": "A key in a Secret of the route's namespace holding the API key.",
            "required": ["name", "key"],
            "additionalProperties": False,
            "properties": {
                "name": _SECRET_NAME,
                "key": _SECRET_KEY,
            },
        },
        "tls": {
            "type": "object",
            "description": "TLS to this backend beyond the sidecar's trusted CAs.",
            "additionalProperties": False,
            "properties": {
                "caSecretRef": {
                    "type": "object",
                    "description": (
                        "A key in a Secret of the route's namespace holding PEM CA certificates (a private CA)"
                        " trusted for this backend, besides the public roots and the sidecar's --ca-bundle."
                    ),
                    "required": ["name", "key"],
                    "additionalProperties": False,
                    "properties": {
                        "name": _SECRET_NAME,
                        "key": _SECRET_KEY,
                    },
                },
            },
        },
        "apiKeyEnv": {
            "type": "string",
            "maxLength": 128,
            "pattern": ENV_NAME,
            "description": "Name of an environment variable of the sidecar holding the API key.",
        },
        "price": PRICE,
        "quality": _integer("Relative answer quality 0..100, used by strategy score (default 50).", 0, 100),
        "capabilities": {
            "type": "array",
            "maxItems": len(CAPABILITIES),
            "items": {"type": "string", "enum": CAPABILITIES},
            "description": (
                "Request features the backend serves: tools, vision (image parts), json (response_format),"
                " prefill (continues a final assistant message: a broken stream is resumed on it; a backend"
                " that serves only the Responses API never is, that API has no prefill)."
            ),
        },
        "apis": {
            "type": "array",
            "maxItems": len(APIS),
            "items": {"type": "string", "enum": APIS},
            "description": (
                "APIs the upstream serves natively: chat, responses, embeddings, completions (openai, azure-openai;"
                " default [chat]) or messages (anthropic; the default). Other inbound APIs are translated where"
                " a translation exists."
            ),
        },
        "contextWindow": _integer(
            "Most tokens a request may hold (prompt and answer); prompts estimated larger skip this backend, and"
            " one it refuses as too long goes to a backend with a larger window.",
            1,
            100_000_000,
        ),
        "maxConcurrency": _integer("Most requests in flight to this backend from one sidecar.", 1, 100000),
        "weight": _integer("Relative share for strategy weighted (default 1).", 0, 10000),
        "selfHosted": {
            "type": "boolean",
            "description": "Latency grows with load (vLLM and the like): the balancer then weighs in-flight requests.",
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "!(has(self.apiKeySecretRef) && has(self.apiKeyEnv))",
            "message": "set at most one of apiKeySecretRef and apiKeyEnv",
        },
        {
            "rule": "!(self.provider == 'anthropic' && has(self.capabilities) && 'json' in self.capabilities)",
            "message": "provider anthropic cannot serve 'json' requests",
        },
        {
            "rule": (
                "!has(self.apis) || self.apis.all(a, self.provider == 'anthropic' ? a == 'messages' : a != 'messages')"
            ),
            "message": "provider anthropic serves only the messages API, and only provider anthropic serves it",
        },
        {
            "rule": "!has(self.apis) || self.apis.all(a, self.apis.exists_one(b, b == a))",
            "message": "apis must not repeat an entry",
        },
    ],
}

PRIORITY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "timeout": _duration("Overall deadline for a request of this class (to the first token for streams)."),
        "hedge": {"type": "boolean", "description": "Send a second request when the first is slower than its p95."},
        "maxConcurrency": _integer("Most requests of this class in flight in one sidecar; the rest wait.", 1, 100000),
        "strategy": _strategy("Overrides the route's strategy for this class."),
        "streamIdle": {
            "type": "object",
            "description": (
                "Bounds of the silence a stream may keep between chunks before it counts as interrupted; within"
                " them the limit is learned from the backend's normal gaps (4 x the p95 of its streams' longest)."
            ),
            "additionalProperties": False,
            "properties": {
                "min": _duration("Never cut for a shorter silence (default 2s)."),
                "max": _duration("Always cut for a longer one (default the class's timeout, at least 30s)."),
            },
        },
    },
}

SPEC = {
    "type": "object",
    "description": "Which backends serve the route's models and how each request picks one.",
    "required": ["models", "backends"],
    "additionalProperties": False,
    "properties": {
        "models": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_MODELS,
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
            "description": "Model names apps send; unique across the LLMRoutes of a namespace.",
        },
        "workloadSelector": workload_selector(
            "Pods whose sidecars get this route; empty selects every pod of the namespace."
        ),
        "strategy": _strategy("How the primary backend is chosen per request (default latency)."),
        "weights": {
            "type": "object",
            "description": "Relative weights of the score strategy.",
            "additionalProperties": False,
            "properties": {
                "latency": _number("Weight of live latency.", 0),
                "cost": _number("Weight of price.", 0),
                "quality": _number("Weight of quality.", 0),
            },
        },
        "backends": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BACKENDS,
            "items": BACKEND,
            "description": "The LLM APIs this route may use.",
        },
        "systemPrompts": {
            "type": "object",
            "description": (
                "System prompts by locale (vi, th, id, en, ...): the x-llmroute-locale request header picks one"
                " when the app sent no system prompt of its own."
            ),
            "maxProperties": 64,
            "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 65536},
        },
        "fallback": {
            "type": "array",
            "maxItems": MAX_BACKENDS,
            "items": {"type": "string", "maxLength": 63},
            "description": "Backend names tried, in order, after the chosen backend fails or times out.",
        },
        "priorities": {
            "type": "object",
            "description": "Per-class policy; the class comes from the x-llmroute-priority header.",
            "additionalProperties": False,
            "properties": {name: PRIORITY for name in PRIORITIES},
        },
        "retry": {
            "type": "object",
            "description": "Retries on another backend, bounded by attempts and a budget.",
            "additionalProperties": False,
            "properties": {
                "attempts": _integer("Most extra attempts per request (default 2).", 0, 10),
                "budgetPercent": _number(
                    "Fail-overs and hedges at most this share of the last 10 s of requests, plus a reserve of 100"
                    " (half of it kept from hedges for fail-overs); default 20.",
                    0,
                    100,
                ),
                "retryOn": {
                    "type": "array",
                    "maxItems": len(RETRY_ON),
                    "items": {"type": "string", "enum": RETRY_ON},
                    "description": "Failures that are retried (default all).",
                },
            },
        },
        "outlierDetection": {
            "type": "object",
            "description": "Ejection of failing backends.",
            "additionalProperties": False,
            "properties": {
                "consecutiveFailures": _integer("Failures in a row that eject a backend (default 5).", 1, 1000),
                "baseEjectionTime": _duration(
                    "First ejection time, doubled by each further ejection in a row (up to 300s), and how long an"
                    " ejected backend whose probe failed waits for the next (default 30s)."
                ),
                "maxEjectionPercent": _integer("Most backends ejected at once, in percent (default 50).", 0, 100),
            },
        },
    },
    "x-kubernetes-validations": [
        {
            "rule": "self.backends.all(b, self.backends.exists_one(c, c.name == b.name))",
            "message": "backend names must be unique",
        },
        {
            "rule": "!has(self.fallback) || self.fallback.all(f, self.backends.exists(b, b.name == f))",
            "message": "every fallback entry must name a backend of this route",
        },
        {
            "rule": "self.models.all(m, self.models.exists_one(n, n == m))",
            "message": "model names must be unique",
        },
        {
            "rule": (
                "self.backends.all(b, !has(b.apis) || !('embeddings' in b.apis) || self.backends.all(c,"
                " !has(c.apis) || !('embeddings' in c.apis) || c.model == b.model))"
            ),
            "message": (
                "backends that serve embeddings must all name the same model: vectors of different embedding"
                " models are not comparable, so a route never fails over between them"
            ),
        },
    ],
}

CONDITION = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string", "maxLength": 316},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string", "maxLength": 1024},
        "message": {"type": "string", "maxLength": 32768},
        "observedGeneration": {"type": "integer", "minimum": 0},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
    },
}

CONDITIONS = {
    "type": "array",
    "items": CONDITION,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""A status's conditions: metav1.Condition entries, a list-map keyed by type (LLMRoute and LLMPolicy)."""

BACKEND_STATUS = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "healthy": {"type": "boolean"},
        "latencyP50Ms": {"type": "number"},
        "latencyP95Ms": {"type": "number"},
        "ttftP95Ms": {"type": "number"},
        "errorRate": {"type": "number"},
        "requestsPerMinute": {"type": "number"},
        "spendUSDPerHour": {"type": "number"},
    },
}

STATUS = {
    "type": "object",
    "description": "What the operator and the sidecars observed.",
    "properties": {
        "observedGeneration": {"type": "integer"},
        "conditions": CONDITIONS,
        "version": {"type": "string", "description": "Routing-table version that includes this generation."},
        "backendNames": {
            "type": "string",
            "description": "The backends of the observed generation, comma-separated (the wide Backends column).",
        },
        "sidecars": {
            "type": "object",
            "properties": {
                "connected": {"type": "integer"},
                "programmed": {"type": "integer"},
                "rejected": {"type": "integer"},
            },
        },
        "backends": {"type": "array", "items": BACKEND_STATUS},
    },
}

PRINTER_COLUMNS = [
    {"name": "Programmed", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Programmed")].status'},
    {"name": "Models", "type": "string", "jsonPath": ".spec.models"},
    # A printer column shows only the first match of a JSONPath, so `.spec.backends[*].name` would name one
    # backend: the operator writes the whole list into status.backendNames.
    {"name": "Backends", "type": "string", "jsonPath": ".status.backendNames", "priority": 1},
    {"name": "Sidecars", "type": "integer", "jsonPath": ".status.sidecars.programmed"},
    {"name": "P95", "type": "string", "jsonPath": ".status.backends[0].latencyP95Ms", "description": "p95 ms"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _structural(schema: Any) -> Any:
    """Drop `additionalProperties: false`: Kubernetes forbids it in structural schemas and prunes instead."""
    if isinstance(schema, dict):
        return {k: _structural(v) for k, v in schema.items() if not (k == "additionalProperties" and v is False)}
    if isinstance(schema, list):
        return [_structural(item) for item in schema]
    return schema


def crd_manifest(
    *,
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: dict[str, Any],
    status: dict[str, Any],
    printer_columns: list[Any],
) -> dict[str, Any]:
    """A namespaced CustomResourceDefinition of the llmroute.io group with a status subresource."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "shortNames": short_names},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _structural(spec),
                                "status": status,
                            },
                        },
                    },
                },
            ],
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest for LLMRoute."""
    return crd_manifest(
        kind=KIND,
        plural=PLURAL,
        short_names=SHORT_NAMES,
        description="Routes the model names apps send to a set of LLM backends.",
        spec=SPEC,
        status=STATUS,
        printer_columns=PRINTER_COLUMNS,
    )
