"""Scripted backend behaviour: latency distributions, failure rates, and phases on a schedule."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

_Z95 = 1.6448536269514722  # standard normal quantile of 0.95


@dataclass(frozen=True, slots=True)
class Latency:
    """A delay distribution in seconds: fixed, uniform(a, b), or lognormal(median=a, p95=b)."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    a: float = 0.0
    b: float = 0.0

    @classmethod
    def fixed(cls, seconds: float) -> Latency:
        return cls("fixed", seconds)

    @classmethod
    def uniform(cls, low: float, high: float) -> Latency:
        return cls("uniform", low, high)

    @classmethod
    def lognormal(cls, median: float, p95: float) -> Latency:
        """Heavy right tail like real LLM APIs; `p95` must be at least `median`."""
        return cls("lognormal", median, p95)

    def __post_init__(self) -> None:
        if self.a < 0 or self.b < 0:
            raise ValueError("latency must not be negative")
        if self.kind != "fixed" and self.b < self.a:
            raise ValueError(f"{self.kind} latency needs the second value >= the first")
        if self.kind == "lognormal" and self.a <= 0:
            raise ValueError("lognormal latency needs a positive median")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        sigma = (math.log(self.b) - math.log(self.a)) / _Z95
        return rng.lognormvariate(math.log(self.a), sigma)


@dataclass(frozen=True, slots=True)
class Behavior:
    """How a simulated backend answers. Rates are shares of requests in [0, 1] and add up to <= 1."""

    latency: Latency = field(default_factory=Latency)  # until a JSON answer (or the first token)
    ttft: Latency | None = None  # streams: until the first token; defaults to `latency`
    token_delay: float = 0.0  # streams: seconds between tokens
    json_token_delay: float = 0.0  # JSON answers: seconds per output token on top of `latency` (a real model's
    # whole answer takes longer the more it writes; 0: a JSON answer takes `latency` whatever its length)
    output_tokens: int = 16  # capped by the request's max_tokens
    cached_tokens: int = 0  # reported as cached prompt tokens (capped by the prompt)
    cache_write_tokens: int = 0  # Anthropic: prompt tokens reported as written to the cache (after cached ones)
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500,)
    rate_limit_rate: float = 0.0  # 429 with Retry-After
    retry_after: float = 1.0
    hang_rate: float = 0.0  # accept the request and never answer
    reset_rate: float = 0.0  # drop the connection with a TCP reset before answering
    midstream_failure_rate: float = 0.0  # streams: fail right after the first chunk
    midstream_stall_rate: float = 0.0  # streams: go silent for `stall` seconds half-way through the answer
    stall: float = 0.0
    api_key: str | None = None  # when set, any other key gets 401
    context_window: int | None = None  # when set, longer prompts get the provider's context-length 400
    models_stay_up: bool = False  # GET /models answers even while the other endpoints fail
    unsupported_params: tuple[str, ...] = ()  # request fields refused with the provider's 400 (an OpenAI
    # reasoning model refuses `max_tokens`)

    def __post_init__(self) -> None:
        rates = (self.error_rate, self.rate_limit_rate, self.hang_rate, self.reset_rate)
        if any(not 0 <= r <= 1 for r in (*rates, self.midstream_failure_rate, self.midstream_stall_rate)):
            raise ValueError("rates must be between 0 and 1")
        if sum(rates) > 1 + 1e-9:
            raise ValueError("error, rate-limit, hang and reset rates add up to more than 1")
        counts = (
            self.cached_tokens,
            self.cache_write_tokens,
            self.token_delay,
            self.json_token_delay,
            self.retry_after,
            self.stall,
        )
        if self.output_tokens < 1 or min(counts) < 0:
            raise ValueError(
                "output_tokens must be >= 1; token counts, token_delay, json_token_delay, retry_after and stall >= 0"
            )
        if not self.error_statuses or any(not 400 <= s <= 599 for s in self.error_statuses):
            raise ValueError("error_statuses must be HTTP error codes (400-599)")

    def outcome(self, rng: random.Random) -> str:
        """Draw what happens to one request: ok, reset, hang, rate_limited or error."""
        u = rng.random()
        for name, rate in (
            ("reset", self.reset_rate),
            ("hang", self.hang_rate),
            ("rate_limited", self.rate_limit_rate),
            ("error", self.error_rate),
        ):
            if u < rate:
                return name
            u -= rate
        return "ok"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Behaviour phases: each (start_second, Behavior) applies from its start until the next one.

    Seconds count from `epoch` (a time.time() value shared by several processes) or, when it is
    None, from the provider's start.
    """

    phases: tuple[tuple[float, Behavior], ...]
    epoch: float | None = None

    def __post_init__(self) -> None:
        starts = [start for start, _ in self.phases]
        if not starts or starts[0] != 0 or starts != sorted(starts):
            raise ValueError("schedule phases must start at 0 and be in increasing order")

    @classmethod
    def constant(cls, behavior: Behavior) -> Schedule:
        return cls(((0.0, behavior),))

    def at(self, elapsed: float) -> Behavior:
        """The behaviour in force `elapsed` seconds after the origin."""
        current = self.phases[0][1]
        for start, behavior in self.phases:
            if start > elapsed:
                break
            current = behavior
        return current
