"""The faults timeline: one panel per arm, one line per inbound API and fault; what the providers saw (primary
and fallback attempts) and when the app's requests ended, coloured by their grade."""

from __future__ import annotations

from pathlib import Path

from bench.common import charts
from bench.faults.arms import NAMES
from bench.faults.catalogue import DEADLINE_S
from bench.faults.run import Cell
from bench.faults.score import grade

COLORS = {"pass": "#55A868", "partial": "#DD8452", "safe": "#4C72B0", "fail": "#C44E52"}


def draw(cells: list[Cell], path: Path) -> None:
    plt = charts.pyplot()
    arms = list(dict.fromkeys(c.arm for c in cells))
    faults = list(dict.fromkeys(c.row for c in cells))
    fig, axes = plt.subplots(
        1, len(arms), figsize=(5.2 * len(arms), 0.3 * len(faults) + 1.6), sharey=True, squeeze=False
    )
    for ax, arm in zip(axes[0], arms, strict=True):
        for y, key in enumerate(faults):
            cell = next((c for c in cells if c.arm == arm and c.row == key), None)
            if cell is None:
                continue
            for sent, got in zip(cell.sent, cell.received, strict=True):
                color = COLORS[grade(got, cell.fault.expect_error, cell.fault.reason(cell.api)).score]
                ax.plot([sent, sent + got.seconds], [y, y], color=color, linewidth=5, alpha=0.35, solid_capstyle="butt")
                ax.plot([sent + got.seconds], [y], marker="|", markersize=11, color=color)
            ax.scatter(
                [s.at - cell.start for s in cell.primary.seen],
                [y - 0.18] * len(cell.primary.seen),
                marker="x",
                s=18,
                color="#C44E52",
            )
            if cell.fallback is not None:
                seen = cell.fallback.seen
                ax.scatter([s.at - cell.start for s in seen], [y + 0.18] * len(seen), marker="o", s=12, color="#4C72B0")
        ax.axvline(DEADLINE_S, color="#8C8C8C", linestyle=":", linewidth=1)
        ax.set_title(NAMES[arm] if arm != "direct" else "the API's SDK, direct")
        ax.set_xlabel("seconds after the fault was armed")
        ax.set_xlim(-0.3, DEADLINE_S + 12)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(faults)), faults)
    axes[0][0].invert_yaxis()
    handles = [plt.Line2D([], [], color=c, linewidth=5, alpha=0.6, label=f"app: {s}") for s, c in COLORS.items()]
    handles += [
        plt.Line2D([], [], marker="x", linestyle="", color="#C44E52", label="primary saw a request"),
        plt.Line2D([], [], marker="o", linestyle="", color="#4C72B0", label="fallback saw a request"),
        plt.Line2D([], [], linestyle=":", color="#8C8C8C", label="app's deadline"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
