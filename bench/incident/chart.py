"""The incident chart: one panel per policy, latency of every request over time, p95 per second."""

from __future__ import annotations

import math
from pathlib import Path

from bench.common import charts
from bench.incident.summary import PRIORITY_NAMES, PolicyRun, quantile

_COLORS = {"critical": "#C44E52", "normal": "#4C72B0", "batch": "#8C8C8C"}
_SHADE = {"degraded": "#FCE4C4", "cascade": "#F8C9C9"}


def draw(runs: list[PolicyRun], path: Path) -> None:
    plt = charts.pyplot()
    columns = 3
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.1 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, run in zip([a for row in axes for a in row], runs, strict=False):
        for phase in run.phases:
            if phase.name in _SHADE:
                ax.axvspan(phase.start, phase.end, color=_SHADE[phase.name], zorder=0)
        for priority in PRIORITY_NAMES:
            chosen = [r for r in run.records if r.arrival.priority == priority and run.ok(r)]
            ax.scatter(
                [r.sent for r in chosen],
                [r.outcome.seconds for r in chosen],
                s=3,
                color=_COLORS[priority],
                label=priority,
                alpha=0.6,
            )
        failed = [r for r in run.records if not run.ok(r)]
        ax.scatter(
            [r.sent for r in failed],
            [max(r.outcome.seconds, 0.012) for r in failed],
            s=12,
            marker="x",
            color="red",
            label="failed",
        )
        end = int(max(p.end for p in run.phases))
        buckets = [(s, [r.outcome.seconds for r in run.records if s <= r.arrival.at < s + 1]) for s in range(end)]
        p95 = [(s + 0.5, quantile(v, 0.95)) for s, v in buckets if v]
        ax.plot([x for x, _ in p95], [y for _, y in p95], color="black", linewidth=1, label="p95 per second")
        ax.set_yscale("log")
        ax.set_ylim(0.01, 40)
        ax.set_title(run.name, fontsize=9)
        ax.grid(True, which="major", axis="y", linewidth=0.3)
    for ax in [a for row in axes for a in row][len(runs) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7, loc="upper left", markerscale=2)
    for ax in axes[-1]:
        ax.set_xlabel("seconds into the incident")
    for row in axes:
        row[0].set_ylabel("latency (s, log)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
