"""The script: three providers with different latency, price and quality, the phases of the incident,
and the traffic (the same arrivals, priorities and streams for every policy)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from llmroute.sim import Behavior, Latency, Schedule

PRIORITIES = (("critical", 0.2), ("normal", 0.5), ("batch", 0.3))
STREAM_SHARE = 0.4
"""Share of critical and normal requests that stream (batch jobs never do)."""
PROMPTS = (
    "Where is my order #4411?",
    "Can I return shoes bought on sale?",
    "Summarise this customer's last three tickets.",
    "Which jacket is warmer, the Fjell or the Nord?",
)


@dataclass(frozen=True)
class Provider:
    """One backend: its healthy behaviour and what a route says about it."""

    name: str
    model: str
    healthy: Behavior
    price_in: float
    """USD per million input tokens."""
    price_out: float
    quality: int
    weight: int
    """For strategy weighted."""

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


def _healthy(median: float, p95: float, ttft: float) -> Behavior:
    return Behavior(
        latency=Latency.lognormal(median, p95),
        ttft=Latency.lognormal(ttft, ttft * 1.8),
        token_delay=0.01,
        output_tokens=24,
    )


PROVIDERS = (
    Provider("fast", "gpt-4.1", _healthy(0.30, 0.50, 0.12), 8.0, 8.0, 95, 3),
    Provider("mid", "claude-sonnet", _healthy(0.45, 0.70, 0.20), 3.0, 15.0, 92, 2),
    Provider("cheap", "deepseek-chat", _healthy(0.60, 1.00, 0.30), 0.42, 0.42, 70, 1),
)
BY_NAME = {p.name: p for p in PROVIDERS}
DEGRADES, FAILS = "fast", "mid"


@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float
    story: str


def phases(duration: float) -> list[Phase]:
    """healthy 20%, degraded 30%, cascade 20%, recovered 30% of `duration` seconds."""
    cuts = [0.0, 0.2 * duration, 0.5 * duration, 0.7 * duration, duration]
    stories = (
        ("healthy", "all healthy: fast ~300 ms, mid ~450 ms, cheap ~600 ms (medians)"),
        ("degraded", "21:00: fast answers in ~8.5 s instead of ~300 ms"),
        ("cascade", "fast still slow; mid also fails 35% with 500/502/503 and 20% with 429 (Retry-After 2 s)"),
        ("recovered", "fast and mid are healthy again"),
    )
    return [Phase(name, cuts[i], cuts[i + 1], story) for i, (name, story) in enumerate(stories)]


def phase_of(all_phases: list[Phase], t: float) -> str:
    for phase in all_phases:
        if t < phase.end:
            return phase.name
    return all_phases[-1].name


def _degraded(healthy: Behavior) -> Behavior:
    return dataclasses.replace(healthy, latency=Latency.lognormal(8.5, 9.5), ttft=Latency.lognormal(8.0, 9.0))


def _failing(healthy: Behavior) -> Behavior:
    return dataclasses.replace(
        healthy, error_rate=0.35, error_statuses=(500, 502, 503), rate_limit_rate=0.20, retry_after=2.0
    )


def schedule(name: str, duration: float, epoch: float) -> Schedule:
    """Provider `name`'s behaviour over the run, counted from `epoch` (time.time())."""
    healthy = BY_NAME[name].healthy
    p = {ph.name: ph.start for ph in phases(duration)}
    steps: tuple[tuple[float, Behavior], ...]
    if name == DEGRADES:
        steps = ((0.0, healthy), (p["degraded"], _degraded(healthy)), (p["recovered"], healthy))
    elif name == FAILS:
        steps = ((0.0, healthy), (p["cascade"], _failing(healthy)), (p["recovered"], healthy))
    else:
        steps = ((0.0, healthy),)
    return Schedule(steps, epoch=epoch)


def oracle_choice(duration: float, t: float) -> str:
    """The backend with the lowest median latency among those the script keeps healthy at `t`."""
    phase = phase_of(phases(duration), t)
    unhealthy = {"degraded": {DEGRADES}, "cascade": {DEGRADES, FAILS}}.get(phase, set())
    healthy = [p for p in PROVIDERS if p.name not in unhealthy]
    return min(healthy, key=lambda p: p.healthy.latency.a).name


@dataclass(frozen=True)
class Arrival:
    """One app request: when (seconds from the start), how urgent, streamed or not, what it asks."""

    at: float
    priority: str
    stream: bool
    prompt: str


def traffic(duration: float, rate: float, seed: int) -> list[Arrival]:
    """Poisson arrivals at `rate` per second (open loop), each with a priority and a stream flag."""
    rng = random.Random(seed)
    arrivals: list[Arrival] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return arrivals
        priority = rng.choices([p for p, _ in PRIORITIES], [w for _, w in PRIORITIES])[0]
        stream = priority != "batch" and rng.random() < STREAM_SHARE
        arrivals.append(Arrival(t, priority, stream, rng.choice(PROMPTS)))
