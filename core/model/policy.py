"""Typed LLMPolicy objects: what the policy parser produces and every sidecar enforces.

A policy belongs to a namespace's platform team. Every policy of a namespace applies to every route
and sidecar there (a `workloadSelector` narrows a limit to some pods); policies in the operator's own
namespace apply to every namespace. Limits stack: a request must fit every limit that applies to it.
"""

from __future__ import annotations

import calendar
import fnmatch
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from .spec import Backend, Priority

Action = Literal["Reject", "Downgrade", "Observe"]
Passthrough = Literal["Allow", "Deny"]
Quantity = Literal["usd", "requests", "tokens"]
"""What a limit counts: USD for budgets, requests or prompt+completion tokens for rate limits."""

MONTH_DAYS = (30, 31)
"""A window of 30d or 31d means the calendar month in UTC, whatever its length."""


@dataclass(frozen=True, slots=True)
class Window:
    """A tumbling window aligned to UTC: a fixed number of seconds, or the calendar month."""

    seconds: int
    calendar_month: bool = False

    def start(self, now: float) -> float:
        """Unix time at which the window containing `now` began."""
        if self.calendar_month:
            t = time.gmtime(now)
            return float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)))
        return float(int(now) // self.seconds * self.seconds)

    def end(self, now: float) -> float:
        """Unix time at which the window containing `now` ends (the next one's start)."""
        if self.calendar_month:
            t = time.gmtime(now)
            year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
            return float(calendar.timegm((year, month, 1, 0, 0, 0)))
        return self.start(now) + self.seconds


@dataclass(frozen=True, slots=True)
class Selector:
    """Which pods a limit applies to: every one of `match_labels` must be on the pod (empty: all pods)."""

    match_labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items())


@dataclass(frozen=True, slots=True)
class Budget:
    """USD a namespace may spend per window, charged at the cost the sidecar reports in x-llmroute-cost-usd."""

    name: str
    window: Window
    limit_usd: float
    action: Action = "Reject"
    downgrade_max_price_per_mtok: float | None = None
    """Downgrade only: backends whose mean (input + output) price per million tokens is at most this."""
    workload_selector: Selector = field(default_factory=Selector)
    routes: frozenset[str] = frozenset()
    """Only these routes (empty: every route)."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests and tokens (prompt + completion) per minute; None means that quantity is not limited."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    priorities: frozenset[Priority] = frozenset()
    """Only requests of these priority classes (empty: every class)."""
    workload_selector: Selector = field(default_factory=Selector)


@dataclass(frozen=True, slots=True)
class Allowed:
    """What routes of the namespace may use at all; None or empty means no restriction of that kind."""

    providers: frozenset[str] = frozenset()
    hosts: tuple[str, ...] = ()
    """Host names, `*.example.com` wildcards allowed."""
    max_price_per_mtok: float | None = None

    def refuses(self, backend: Backend, host: str) -> str | None:
        """Why `backend` (served from `host`) is outside what this policy allows, or None if it is allowed."""
        if self.providers and backend.provider not in self.providers:
            return f"provider {backend.provider} is not in allowed.providers"
        if self.hosts and not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.hosts):
            return f"host {host} is not in allowed.hosts"
        mean = mean_price(backend)
        if self.max_price_per_mtok is not None and mean > self.max_price_per_mtok:
            return f"price {mean:g} USD/MTok is above allowed.maxPricePerMTok {self.max_price_per_mtok:g}"
        return None


def mean_price(backend: Backend) -> float:
    """A backend's price for policy comparisons: the mean of its input and output USD per million tokens."""
    return (backend.price.input_per_mtok + backend.price.output_per_mtok) / 2


@dataclass(frozen=True, slots=True)
class Policy:
    """One validated LLMPolicy."""

    namespace: str
    name: str
    generation: int = 0
    tier: str = ""
    budgets: tuple[Budget, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    allowed: Allowed = field(default_factory=Allowed)
    passthrough: Passthrough = "Allow"


@dataclass(frozen=True, slots=True)
class QuotaKey:
    """One enforceable quantity: a budget (usd) or one side of a rate limit (requests or tokens).

    `limit` is the budget's or rate limit's name; a rate limit with both sides gives two keys."""

    namespace: str
    policy: str
    limit: str
    quantity: Quantity


def backend_host(backend: Backend) -> str:
    """The host name `allowed.hosts` matches a backend by: that of its URL."""
    return urlsplit(backend.url).hostname or ""


def policy_violation(backends: Sequence[Backend], policies: Iterable[Policy]) -> str | None:
    """Why a route with these backends is outside the `allowed` of one of the policies, or None.

    The message names the policy and the backend, as a route's PolicyViolation condition shows it."""
    for policy in policies:
        for backend in backends:
            reason = policy.allowed.refuses(backend, backend_host(backend))
            if reason is not None:
                return f"LLMPolicy {policy.namespace}/{policy.name}: backend {backend.name}: {reason}"
    return None
