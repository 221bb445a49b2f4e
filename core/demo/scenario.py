"""The demo's cast and script: three simulated providers and the phases of the 21:00 incident, scaled to
the demo's duration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmroute.sim import Behavior, Latency
from llmroute.sim.provider import Kind

SECRET_NAME = "llm-keys"
"""The Secret the shipped route's apiKeySecretRefs name; the demo writes it as a local secrets dir."""


@dataclass(frozen=True, slots=True)
class Cast:
    """One simulated provider: the route backend it plays, its wire format, its key and its healthy self."""

    name: str
    kind: Kind
    secret_key: str
    healthy: Behavior


def _healthy(median: float, p95: float, ttft: float, api_key: str) -> Behavior:
    return Behavior(
        latency=Latency.lognormal(median, p95),
        ttft=Latency.lognormal(ttft, ttft * 1.8),
        token_delay=0.01,
        output_tokens=24,
        api_key=api_key,
    )


CAST = (
    Cast("gpt41", "openai", "openai", _healthy(0.30, 0.50, 0.12, "sk-demo-openai")),
    Cast("claude", "anthropic", "anthropic", _healthy(0.45, 0.70, 0.20, "sk-ant-demo")),
    Cast("deepseek", "openai", "deepseek", _healthy(0.60, 1.00, 0.30, "sk-demo-deepseek")),
)
BY_NAME = {c.name: c for c in CAST}
PRIMARY = "gpt41"
"""The backend that degrades at 21:00."""
SECOND = "claude"
"""The backend that starts failing while the primary is still slow."""


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the demo: from `start` to `end` seconds, with the providers whose behaviour changes
    when it begins (the others keep theirs)."""

    name: str
    start: float
    end: float
    story: str
    changes: tuple[tuple[str, Behavior], ...] = ()


def _degraded(cast: Cast) -> Behavior:
    """The 21:00 incident: answers in 8.5 s instead of 300 ms."""
    return dataclasses.replace(cast.healthy, latency=Latency.lognormal(8.5, 9.5), ttft=Latency.lognormal(8.0, 9.0))


def _failing(cast: Cast, retry_after: float) -> Behavior:
    """Overloaded: a third of requests get a 5xx, a fifth a 429 with Retry-After."""
    return dataclasses.replace(
        cast.healthy,
        error_rate=0.35,
        error_statuses=(500, 502, 503),
        rate_limit_rate=0.20,
        retry_after=retry_after,
    )


def script(duration: float) -> list[Phase]:
    """The phases over `duration` seconds: warm-up, the primary degrades, a second backend fails too,
    both recover (the longest phase, so the router can be seen winning traffic back)."""
    cuts = [0.0, 0.17 * duration, 0.34 * duration, 0.46 * duration, duration]
    primary, second = BY_NAME[PRIMARY], BY_NAME[SECOND]
    retry_after = max(1.0, round(duration / 20))
    stories = (
        ("warm-up", "all healthy: gpt41 ~300 ms, claude ~450 ms, deepseek ~600 ms", ()),
        ("incident", "21:00: gpt41 answers in 8.5 s instead of 300 ms", ((PRIMARY, _degraded(primary)),)),
        (
            "cascade",
            f"gpt41 still slow; claude fails 35% with 5xx and 20% with 429 (Retry-After {retry_after:.0f}s)",
            ((SECOND, _failing(second, retry_after)),),
        ),
        ("recovery", "gpt41 and claude are healthy again", ((PRIMARY, primary.healthy), (SECOND, second.healthy))),
    )
    return [Phase(name, cuts[i], cuts[i + 1], story, changes) for i, (name, story, changes) in enumerate(stories)]


def phase_at(phases: list[Phase], elapsed: float) -> Phase:
    """The phase in force `elapsed` seconds after the start (the last one after the end)."""
    for phase in phases:
        if elapsed < phase.end:
            return phase
    return phases[-1]
