"""The multi-seed incident's figures: each seed's drawn incident, the phase p99s of llmroute and the oracle
and their ratio, the worst ratio over every seed (the issue's target: <= 1.3x), a chart and the docs section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.common import charts, machine, report
from bench.incident.document import ORACLE_FACTOR
from bench.incident.drawn import JUDGED, PHASES, Draw
from bench.incident.floor import floors
from bench.incident.summary import PolicyRun, ms


@dataclass(frozen=True)
class SeedRun:
    """One seed: its drawn incident and the runs of llmroute and the oracle on it."""

    draw: Draw
    runs: list[PolicyRun]

    @property
    def llmroute(self) -> PolicyRun:
        return self.runs[0]

    @property
    def oracle(self) -> PolicyRun:
        return next(r for r in self.runs if r.key == "oracle")

    def p99(self, run: PolicyRun, phase: str) -> float | None:
        return run.latency(run.select(phase=phase), 0.99)

    def ratio(self, phase: str) -> float | None:
        mine, theirs = self.p99(self.llmroute, phase), self.p99(self.oracle, phase)
        return mine / theirs if mine is not None and theirs else None


def worst(results: list[SeedRun]) -> tuple[float, int, str]:
    """The largest phase ratio over the judged phases of every seed, with its seed and phase."""
    ratios = [(r.ratio(p) or 0.0, r.draw.seed, p) for r in results for p in JUDGED]
    return max(ratios, default=(0.0, 0, ""))


def table(results: list[SeedRun]) -> str:
    rows = []
    for r in results:
        floor = floors(r.draw, r.oracle)
        for phase in PHASES:
            ratio = r.ratio(phase)
            mine, theirs = r.llmroute.select(phase=phase), r.oracle.select(phase=phase)
            rows.append(
                [
                    str(r.draw.seed),
                    phase + ("" if phase in JUDGED else " (not judged)"),
                    f"{len(mine)} / {len(theirs)}",
                    f"{100 * r.llmroute.success(mine):.1f}% / {100 * r.oracle.success(theirs):.1f}%",
                    ms(r.p99(r.llmroute, phase)),
                    ms(r.p99(r.oracle, phase)),
                    "" if ratio is None else f"{ratio:.2f}x",
                    f"{floor[phase][1] / floor[phase][0]:.2f}x" if phase in floor else "",
                    _shares(r.llmroute, phase),
                    r.draw.oracle_choice(r.draw.phases()[PHASES.index(phase)].start + 0.01),
                ]
            )
    headers = [
        "seed", "phase", "requests (llmroute / oracle)", "success", "p99 llmroute ms", "p99 oracle ms", "ratio",
        "floor", "llmroute answered by", "oracle uses",
    ]  # fmt: skip
    return report.table(headers, rows)


def _shares(run: PolicyRun, phase: str) -> str:
    """Who answered llmroute's requests of the phase, as shares."""
    answered = run.answered_by(phase)
    total = sum(answered.values())
    return ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in answered.most_common()) if total else ""


def incidents(results: list[SeedRun]) -> str:
    rows = [
        [
            str(d.seed),
            ", ".join(f"{n} {1000 * m:.0f}" for n, m in d.medians.items()),
            f"{d.jitter:.2f}x",
            f"{d.degrades} to {d.slow:.1f} s",
            f"{d.fails} {100 * d.fail_rate:.0f}%" + (" (to the end)" if d.fails_to_end else ""),
            " / ".join(f"{s:g}" for s in d.lengths),
            str(d.clients),
            f"{100 * d.stream_share:.0f}%",
        ]
        for d in (r.draw for r in results)
    ]
    headers = ["seed", "medians ms", "p95/median", "degrades", "then fails (5xx)", "phases s", "clients", "streams"]
    return report.table(headers, rows)


def render(results: list[SeedRun], meta: dict[str, object], image: str) -> str:
    ratio, seed, phase = worst(results)
    verdict = "met" if ratio <= ORACLE_FACTOR else "**not met**"
    return f"""## The incident on drawn schedules (several seeds)

Measured {meta["date"]} (llmroute {meta["commit"]}) with

    {meta["command"]}

on a machine shared with other engineers' builds and tests ({machine.cpu_model()}, 2 cores), 1-minute load
average {meta["load_start"]} at the start and {meta["load_end"]} at the end.

**Worst phase ratio: {ratio:.2f}x** (seed {seed}, {phase}) against the target of {ORACLE_FACTOR}x on every
seed: {verdict}.

Latency ratios on a loaded machine are noisy: a phase has 40-350 requests per arm, so its p99 is one of its
few slowest requests, and the oracle's p99 is a few hundred milliseconds, so one request the machine delays
by a second (a stream's 24 token sleeps, a starved process) moves a ratio by 1x or more, either way.

Each seed draws an incident (`bench/incident/drawn.py`): three backends' healthy medians (the best 200-500
ms, the others 1.2-1.8x and 1.8-2.8x that) and their p95/median (1.2-2.2); which backend degrades (any of
the three) and to what median (5-10 s); the failure rate (30-60%, 500/502/503) of the best other backend
from the third phase on, and whether it still fails after the degraded one recovers; the four phases'
lengths (healthy 5-8 s, then 7-12 s each); the number of closed-loop clients (4-12, each sends its next
request when its answer came) at normal priority; and their share of streams (0-50%). llmroute runs
`llmroute sidecar` with the incident bench's route (strategy `latency`, normal timeout 3 s, 2 retry
attempts, outlier detection); the oracle is a client that always calls the backend with the lowest median
of those the schedule keeps healthy at that moment. Both arms run at the same time, each on its own
providers following the drawn schedule from one shared start, so both meet the same machine load. Each
app's n-th request is the same in both arms (stream or not, prompt) and carries a key from which the
providers draw its latency (the same quantile on every backend), so the arms differ in where they send a
request, not in the luck of the draw. A phase's p99 covers every request sent in it, failed ones at the
time they took; the ratio is llmroute's p99 over the oracle's. The target is judged on the phases after a
transition (the healthy phase starts with no history and is shown for reference). The floor is the ratio
of the best router that learns of a transition only from answers (`python -m bench.incident.floor`,
modelled on the oracle's own requests): a ratio near it is as good as answers allow.

{incidents(results)}

{table(results)}

![llmroute and the oracle per seed]({image})

Raw records: `bench/results/incident-seeds.json` (`python -m bench.incident.seeds --report-only` redraws
this section from them).
"""


def draw_chart(results: list[SeedRun], path: Path) -> None:
    """One panel per seed: every request's latency over time for llmroute and the oracle, phases shaded,
    each phase's ratio written in it."""
    plt = charts.pyplot()
    fig, axes = plt.subplots(len(results), 1, figsize=(11, 2.8 * len(results)), squeeze=False)
    shade = {"degraded": "#FCE4C4", "cascade": "#F8C9C9", "recovered": "#E3F1E3"}
    for ax, r in zip([row[0] for row in axes], results, strict=True):
        for phase in r.draw.phases():
            if phase.name in shade:
                ax.axvspan(phase.start, phase.end, color=shade[phase.name], zorder=0)
            ratio = r.ratio(phase.name)
            label = f"{phase.name}\n{ratio:.2f}x" if ratio is not None else phase.name
            ax.text((phase.start + phase.end) / 2, 25, label, ha="center", va="top", fontsize=8)
        for run, color in ((r.oracle, "#8C8C8C"), (r.llmroute, "#4C72B0")):
            ax.scatter(
                [x.sent for x in run.records],
                [max(x.outcome.seconds, 0.012) for x in run.records],
                s=3,
                color=color,
                alpha=0.6,
                label=run.name,
            )
        ax.set_yscale("log")
        ax.set_ylim(0.05, 40)
        ax.set_title(f"seed {r.draw.seed}: {r.draw.clients} clients", fontsize=9)
        ax.set_ylabel("latency (s, log)")
        ax.legend(fontsize=7, loc="lower right", markerscale=3)
    axes[-1][0].set_xlabel("seconds into the incident")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
