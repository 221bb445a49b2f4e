"""Typed, validated LLMRoute objects: what the parser produces and the sidecar routes by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Provider = Literal["openai", "anthropic", "azure-openai"]
Strategy = Literal["latency", "score", "cost", "ordered", "weighted"]
Priority = Literal["critical", "normal", "batch"]
RetryOn = Literal["connect-failure", "reset", "5xx", "429", "timeout"]
Api = Literal["chat", "messages", "responses", "embeddings", "completions"]
"""An inbound API the sidecar serves, and what a backend's upstream may serve natively (its `apis`)."""

NATIVE_APIS: dict[str, frozenset[Api]] = {
    "openai": frozenset({"chat", "responses", "embeddings", "completions"}),
    "azure-openai": frozenset({"chat", "responses", "embeddings", "completions"}),
    "anthropic": frozenset({"messages"}),
}
"""What each provider's wire protocol can serve at all; a backend's `apis` must be a subset."""
DEFAULT_APIS: dict[str, frozenset[Api]] = {
    "openai": frozenset({"chat"}),
    "azure-openai": frozenset({"chat"}),
    "anthropic": frozenset({"messages"}),
}
"""A backend's `apis` when the route does not say."""

DEFAULT_AZURE_API_VERSION = "2024-10-21"

WIRE_FEATURES = frozenset({"n>1", "logprobs"})
"""Request features of the chat.completions API that a route does not declare: every provider has them
unless PROVIDER_LACKS says otherwise."""
PROVIDER_LACKS: dict[str, frozenset[str]] = {"anthropic": frozenset({"json", "n>1", "logprobs"})}
"""What a provider's API cannot serve, whatever a route declares: Anthropic's Messages API has no
response_format, answers with one choice and returns no log probabilities."""


class SecretValue:
    """A credential whose repr and str never show the value, so it cannot leak through logs or debug output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The raw value: call only where it goes on the wire."""
        return self._value

    def __repr__(self) -> str:
        return "SecretValue('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretValue) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class SecretRef:
    """A key of a Secret in the route's namespace."""

    name: str
    key: str


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None
    """Prompt tokens written to the provider's cache (Anthropic charges a premium for them)."""

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, written_tokens: int = 0
    ) -> float:
        """USD for one request's usage; cached and cache-written prompt tokens are priced at their own rates
        (each defaulting to the input rate)."""
        cached = min(cached_tokens, prompt_tokens)
        written = min(written_tokens, prompt_tokens - cached)
        cached_rate = self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        write_rate = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        return (
            (prompt_tokens - cached - written) * self.input_per_mtok
            + cached * cached_rate
            + written * write_rate
            + completion_tokens * self.output_per_mtok
        ) / 1_000_000


@dataclass(frozen=True, slots=True)
class Backend:
    """One LLM API a route may call. `api_key` is resolved by whoever loads the route (files or operator)."""

    name: str
    provider: Provider
    url: str
    model: str
    price: Price = field(default_factory=Price)
    quality: int = 50
    capabilities: frozenset[str] = frozenset()
    max_concurrency: int | None = None
    context_window: int | None = None
    """Tokens a request may hold; None: not declared (no request is skipped for its size)."""
    weight: int = 1
    self_hosted: bool = False
    api_version: str = DEFAULT_AZURE_API_VERSION
    apis: frozenset[Api] = frozenset()
    """The APIs its upstream serves natively (empty: the provider's DEFAULT_APIS); requests of other inbound
    APIs are translated, where a translation exists (see llmroute.sidecar.upstream.codecs)."""
    api_key_secret_ref: SecretRef | None = None
    api_key_env: str | None = None
    api_key: SecretValue | None = field(default=None, compare=True, repr=False)
    ca_secret_ref: SecretRef | None = None
    """`tls.caSecretRef`: a Secret key holding PEM CA certificates this backend's TLS certificate chains to."""
    ca_bundle: SecretValue | None = field(default=None, compare=True, repr=False)
    """The PEM of `ca_secret_ref`, resolved like `api_key` (operator or secrets dir): trusted for this backend only."""

    def __post_init__(self) -> None:
        if not self.apis:
            object.__setattr__(self, "apis", DEFAULT_APIS[self.provider])

    def serves(self, needs: frozenset[str]) -> bool:
        """Whether a request needing `needs` (see the sidecar's needed_capabilities) can go to this backend."""
        if not needs:
            return True  # most requests: no set arithmetic on the hot path
        return not self.lacks(needs)

    def lacks(self, needs: frozenset[str]) -> frozenset[str]:
        """What of `needs` this backend cannot serve."""
        return needs - ((self.capabilities | WIRE_FEATURES) - PROVIDER_LACKS.get(self.provider, frozenset()))

    @property
    def load_sensitive(self) -> bool:
        """Whether latency grows with our own load, so the balancer should weigh in-flight requests."""
        return self.self_hosted or self.max_concurrency is not None


@dataclass(frozen=True, slots=True)
class PriorityPolicy:
    """What a priority class gets: a deadline, hedging, a concurrency cap, a strategy override."""

    timeout: float
    hedge: bool = False
    max_concurrency: int | None = None
    strategy: Strategy | None = None
    stream_idle_min: float | None = None
    stream_idle_max: float | None = None
    """Bounds of a stream's idle limit; None: the sidecar's defaults."""


DEFAULT_PRIORITIES: dict[Priority, PriorityPolicy] = {
    "critical": PriorityPolicy(timeout=10.0, hedge=True),
    "normal": PriorityPolicy(timeout=30.0),
    "batch": PriorityPolicy(timeout=300.0),
}


@dataclass(frozen=True, slots=True)
class Weights:
    """Relative weights of the score strategy."""

    latency: float = 0.4
    cost: float = 0.3
    quality: float = 0.3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Extra attempts on other backends, bounded by a budget so an outage never multiplies load."""

    attempts: int = 2
    retry_budget_percent: float = 20.0
    retry_on: frozenset[RetryOn] = frozenset({"connect-failure", "reset", "5xx", "429", "timeout"})


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy-style ejection of backends that fail in a row."""

    consecutive_failures: int = 5
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class Route:
    """One validated LLMRoute."""

    name: str
    namespace: str
    models: tuple[str, ...]
    backends: tuple[Backend, ...]
    strategy: Strategy = "latency"
    weights: Weights = field(default_factory=Weights)
    fallback: tuple[str, ...] = ()
    priorities: dict[Priority, PriorityPolicy] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    outlier_detection: OutlierDetection = field(default_factory=OutlierDetection)
    workload_selector: dict[str, str] = field(default_factory=dict)
    system_prompts: dict[str, str] = field(default_factory=dict)
    """By locale (the x-llmroute-locale header): the system prompt of a request that brings none."""
    generation: int = 0

    @property
    def key(self) -> str:
        """`namespace/name`, how logs and status name the route."""
        return f"{self.namespace}/{self.name}"

    def backend(self, name: str) -> Backend:
        """The backend called `name`; KeyError when the route has none."""
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)

    def selects(self, labels: dict[str, str]) -> bool:
        """Whether a pod with these labels gets this route."""
        return all(labels.get(k) == v for k, v in self.workload_selector.items())
