"""Figures of one policy's replay: success, latency percentiles per phase and priority, spend."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.incident.client import Attempt
from bench.incident.policies import Outcome
from bench.incident.replay import Record
from bench.incident.scenario import BY_NAME, Arrival, Phase, phase_of

PRIORITY_NAMES = ("critical", "normal", "batch")


def quantile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank quantile (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class PolicyRun:
    """One policy's records, with the providers' own counts and the proxy's config."""

    key: str
    name: str
    records: list[Record]
    sim_stats: dict[str, dict[str, Any]]
    config: str
    phases: list[Phase]

    def to_doc(self) -> dict[str, Any]:
        """Every record as JSON, so a report can be redrawn without a rerun."""
        records = [dataclasses.asdict(rec) for rec in self.records]
        return {
            "key": self.key,
            "name": self.name,
            "config": self.config,
            "sim_stats": self.sim_stats,
            "records": records,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any], phases: list[Phase]) -> PolicyRun:
        """A run saved by to_doc()."""
        records = [
            Record(
                Arrival(**rec["arrival"]),
                rec["sent"],
                Outcome(
                    Attempt(**rec["outcome"]["final"]),
                    rec["outcome"]["seconds"],
                    rec["outcome"]["attempts"],
                    tuple(rec["outcome"]["errors"]),
                ),
            )
            for rec in doc["records"]
        ]
        return cls(doc["key"], doc["name"], records, doc["sim_stats"], doc["config"], phases)

    def phase(self, record: Record) -> str:
        return phase_of(self.phases, record.arrival.at)

    def select(self, phase: str | None = None, priority: str | None = None) -> list[Record]:
        return [
            r
            for r in self.records
            if (phase is None or self.phase(r) == phase) and (priority is None or r.arrival.priority == priority)
        ]

    @staticmethod
    def ok(record: Record) -> bool:
        return record.outcome.final.error is None

    def success(self, records: list[Record]) -> float:
        return sum(map(self.ok, records)) / len(records) if records else math.nan

    def latency(self, records: list[Record], q: float) -> float | None:
        """Seconds until the app had its answer or its error, failed requests included."""
        return quantile((r.outcome.seconds for r in records), q)

    def spend_answered(self) -> float:
        """USD of the answers the app got: their usage at the answering provider's prices."""
        total = 0.0
        for r in self.records:
            final = r.outcome.final
            if self.ok(r) and final.backend in BY_NAME:
                total += BY_NAME[final.backend].cost(final.prompt_tokens, final.completion_tokens)
        return total

    def spend_billed(self) -> float:
        """USD the providers would bill: every request each accepted (answers the app never saw, such as
        hedges that lost, attempts cut for time and shadow probes, included), at the mean usage of the
        answers in this run."""
        answered = [r.outcome.final for r in self.records if self.ok(r)]
        if not answered:
            return 0.0
        prompt = sum(a.prompt_tokens for a in answered) / len(answered)
        completion = sum(a.completion_tokens for a in answered) / len(answered)
        total = 0.0
        for name, stats in self.sim_stats.items():
            outcomes = stats.get("by_outcome", {})
            accepted = outcomes.get("ok", 0) + outcomes.get("midstream_failure", 0)
            total += accepted * BY_NAME[name].cost(round(prompt), round(completion))
        return total

    def sent_to(self) -> dict[str, int]:
        """Completion requests each provider received (all attempts, probes included)."""
        return {
            name: sum(v for k, v in s.get("by_path", {}).items() if k.startswith("POST"))
            for name, s in self.sim_stats.items()
        }

    def answered_by(self, phase: str | None = None) -> Counter[str]:
        return Counter(r.outcome.final.backend or "?" for r in self.select(phase) if self.ok(r))

    def failures(self) -> Counter[tuple[str, str, str]]:
        """(phase, priority, error) of each failed request."""
        return Counter(
            (self.phase(r), r.arrival.priority, r.outcome.final.error or "") for r in self.records if not self.ok(r)
        )

    def failure_examples(self, limit: int = 6) -> list[str]:
        """Distinct error messages the app got, most frequent first, with a count."""
        messages = Counter(
            f"{r.arrival.priority} {'stream' if r.arrival.stream else 'json'} in {self.phase(r)}: "
            f"{r.outcome.final.error}: {' '.join(r.outcome.final.detail.split())[:400]}"
            for r in self.records
            if not self.ok(r)
        )
        return [f"{n}x {m}" for m, n in messages.most_common(limit)]


def ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{1000 * seconds:,.0f}"
