"""Incident schedules drawn at random from a seed, for `python -m bench.incident.seeds`.

Each seed draws the three backends' healthy latencies and jitter, which backend degrades and how slow it
gets, how often the best remaining one then fails with 5xx, whether that failure outlasts the recovery,
the four phases' lengths, the number of closed-loop clients and their share of streams. The phases:
healthy; one backend degrades; the best of the others also fails part of its requests; the degraded one
recovers. The oracle always uses the backend with the lowest median among those healthy at that moment.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.incident.scenario import PROVIDERS, Phase, phase_of
from llmroute.sim import Behavior, Latency, Schedule

NAMES = tuple(p.name for p in PROVIDERS)
PHASES = ("healthy", "degraded", "cascade", "recovered")
JUDGED = PHASES[1:]
"""The phases after a transition: the target is about them (the healthy phase starts cold, and is shown)."""


@dataclass(frozen=True)
class Draw:
    """One seed's incident: everything the providers and the clients do."""

    seed: int
    medians: dict[str, float]
    """Healthy median latency (seconds) of each backend."""
    jitter: float
    """Healthy p95 / median of every backend."""
    degrades: str
    slow: float
    """The degraded backend's median latency (seconds); its p95 is 1.15x that."""
    fails: str
    """The best backend but the degraded one: from the cascade on it fails `fail_rate` of its requests."""
    fail_rate: float
    fails_to_end: bool
    """Whether `fails` still fails after the degraded backend recovers."""
    lengths: tuple[float, float, float, float]
    """Seconds of each phase (healthy, degraded, cascade, recovered)."""
    clients: int
    stream_share: float

    @property
    def duration(self) -> float:
        return sum(self.lengths)

    def phases(self) -> list[Phase]:
        starts = [sum(self.lengths[:i]) for i in range(len(self.lengths) + 1)]
        return [
            Phase(name, starts[i], starts[i + 1], story)
            for i, (name, story) in enumerate(zip(PHASES, self._stories(), strict=True))
        ]

    def _stories(self) -> tuple[str, ...]:
        healthy = ", ".join(f"{n} {1000 * m:.0f} ms" for n, m in self.medians.items())
        failing = f"{self.fails} fails {100 * self.fail_rate:.0f}% with 5xx"
        return (
            f"all healthy (medians {healthy}, p95 {self.jitter:.1f}x)",
            f"{self.degrades} answers in ~{self.slow:.1f} s",
            f"{self.degrades} still slow; {failing}",
            f"{self.degrades} healthy again" + (f"; {failing} still" if self.fails_to_end else f", {self.fails} too"),
        )

    def unhealthy(self, t: float) -> set[str]:
        """The backends the script has slow or failing at `t` seconds."""
        phase = phase_of(self.phases(), t)
        bad = {"degraded": {self.degrades}, "cascade": {self.degrades, self.fails}}.get(phase, set())
        if phase == "recovered" and self.fails_to_end:
            bad = {self.fails}
        return bad

    def oracle_choice(self, t: float) -> str:
        """The healthy backend with the lowest median at `t`."""
        return min((n for n in NAMES if n not in self.unhealthy(t)), key=lambda n: self.medians[n])

    def schedules(self, epoch: float) -> dict[str, Schedule]:
        """Each backend's behaviour over the run, counted from `epoch` (time.time())."""
        start = {p.name: p.start for p in self.phases()}
        out = {}
        for name in NAMES:
            healthy = Behavior(
                latency=Latency.lognormal(self.medians[name], self.medians[name] * self.jitter),
                ttft=Latency.lognormal(self.medians[name] / 2, self.medians[name] / 2 * self.jitter),
                token_delay=0.01,
                output_tokens=24,
            )
            steps: list[tuple[float, Behavior]] = [(0.0, healthy)]
            if name == self.degrades:
                slow = Latency.lognormal(self.slow, self.slow * 1.15)
                steps += [(start["degraded"], dataclasses.replace(healthy, latency=slow, ttft=slow))]
                steps += [(start["recovered"], healthy)]
            elif name == self.fails:
                failing = dataclasses.replace(healthy, error_rate=self.fail_rate, error_statuses=(500, 502, 503))
                steps += [(start["cascade"], failing)]
                if not self.fails_to_end:
                    steps += [(start["recovered"], healthy)]
            out[name] = Schedule(tuple(steps), epoch=epoch)
        return out

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Draw:
        """A Draw from its JSON (dataclasses.asdict) form."""
        return cls(**{**doc, "lengths": tuple(doc["lengths"])})

    @classmethod
    def load(cls, path: Path) -> Draw:
        return cls.from_doc(json.loads(path.read_text()))


def draw(seed: int) -> Draw:
    """The incident of `seed` (the same seed always draws the same incident)."""
    rng = random.Random(seed)
    best = rng.uniform(0.2, 0.5)
    medians = sorted([best, best * rng.uniform(1.2, 1.8), best * rng.uniform(1.8, 2.8)])
    by_name = dict(zip(NAMES, medians, strict=True))  # route order is fastest first, as a user would list them
    degrades = rng.choice(NAMES)
    fails = min((n for n in NAMES if n != degrades), key=lambda n: by_name[n])
    return Draw(
        seed=seed,
        medians={n: round(m, 3) for n, m in by_name.items()},
        jitter=round(rng.uniform(1.2, 2.2), 2),
        degrades=degrades,
        slow=round(rng.uniform(5.0, 10.0), 1),
        fails=fails,
        fail_rate=round(rng.uniform(0.3, 0.6), 2),
        fails_to_end=rng.random() < 0.5,
        lengths=(
            round(rng.uniform(5, 8), 1),
            round(rng.uniform(7, 12), 1),
            round(rng.uniform(7, 12), 1),
            round(rng.uniform(7, 12), 1),
        ),
        clients=rng.randint(4, 12),
        stream_share=round(rng.uniform(0.0, 0.5), 2),
    )
