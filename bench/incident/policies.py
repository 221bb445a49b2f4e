"""The policies compared. Baselines that are not llmroute are small client-side routers over httpx, as an
app would write them; the proxies (llmroute sidecar, LiteLLM) get one request and route it themselves."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import httpx

from bench.incident import client
from bench.incident.scenario import BY_NAME, PROVIDERS, Arrival

APP_TIMEOUT_S = 30.0
"""How long the app waits for any answer at all (every policy)."""
PRIMARY_TIMEOUT_S = 2.0
"""The hand-written router's per-attempt timeout: a few times the primary's healthy p99."""


@dataclass(frozen=True)
class Outcome:
    """What the app saw for one request: the last attempt, and how many there were."""

    final: client.Attempt
    seconds: float
    attempts: int
    errors: tuple[str, ...] = ()
    """Errors of earlier attempts (client-side routers)."""


def _client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(APP_TIMEOUT_S))


@dataclass
class Router:
    """Base: `send` one arrival; `t` is seconds since the script's start."""

    name: str
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    async def send(self, arrival: Arrival, t: float) -> Outcome:
        raise NotImplementedError

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients.values()))


class Direct(Router):
    """A client-side router that calls the providers itself (the sims' URLs)."""

    def __init__(self, name: str, urls: dict[str, str]) -> None:
        super().__init__(name, {n: _client() for n in urls})
        self.urls = {n: f"{u}/chat/completions" for n, u in urls.items()}

    async def attempt(self, backend: str, arrival: Arrival, limit_s: float | None = None) -> client.Attempt:
        payload = client.body(BY_NAME[backend].model, arrival.prompt, arrival.stream)
        got = await client.call(self.clients[backend], self.urls[backend], payload, arrival.stream, {}, limit_s)
        return got if got.backend else _named(got, backend)


def _named(attempt: client.Attempt, backend: str) -> client.Attempt:
    return replace(attempt, backend=backend)


class RoundRobin(Direct):
    """Each request to the next provider in turn; no retry."""

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__("round-robin", urls)
        self._next = itertools.cycle([p.name for p in PROVIDERS])

    async def send(self, arrival: Arrival, t: float) -> Outcome:
        started = time.monotonic()
        got = await self.attempt(next(self._next), arrival)
        return Outcome(got, time.monotonic() - started, 1)


class PrimaryWithTimeout(Direct):
    """Try the primary (the best on paper) with a timeout, then the next provider in a fixed order, on a
    timeout, a 5xx, a 429 or a broken connection."""

    def __init__(self, urls: dict[str, str]) -> None:
        super().__init__(f"primary + {PRIMARY_TIMEOUT_S:g}s timeout, fallback", urls)

    async def send(self, arrival: Arrival, t: float) -> Outcome:
        started, errors = time.monotonic(), list[str]()
        for number, provider in enumerate(PROVIDERS, 1):
            got = await self.attempt(provider.name, arrival, PRIMARY_TIMEOUT_S)
            if got.error is None or (got.error.startswith("4") and got.error != "429"):
                return Outcome(got, time.monotonic() - started, number, tuple(errors))
            errors.append(f"{provider.name}: {got.error}")
        return Outcome(got, time.monotonic() - started, len(PROVIDERS), tuple(errors[:-1]))


class Oracle(Direct):
    """Always the provider the script keeps fastest and healthy at that moment (it reads the script):
    `choose(t)` names it, `t` seconds into the script."""

    def __init__(self, urls: dict[str, str], choose: Callable[[float], str]) -> None:
        super().__init__("oracle", urls)
        self.choose = choose

    async def send(self, arrival: Arrival, t: float) -> Outcome:
        started = time.monotonic()
        got = await self.attempt(self.choose(t), arrival)
        return Outcome(got, time.monotonic() - started, 1)


class Proxy(Router):
    """Everything through one proxy (llmroute sidecar or LiteLLM) with the route's model name."""

    def __init__(self, name: str, base_url: str, model: str) -> None:
        super().__init__(name, {"proxy": _client()})
        self.url = f"{base_url}/chat/completions"
        self.model = model

    async def send(self, arrival: Arrival, t: float) -> Outcome:
        started = time.monotonic()
        payload = client.body(self.model, arrival.prompt, arrival.stream)
        headers = {"x-llmroute-priority": arrival.priority}
        got = await client.call(self.clients["proxy"], self.url, payload, arrival.stream, headers)
        return Outcome(got, time.monotonic() - started, 1)
