"""The peers chart: added latency, throughput, CPU per request and memory of each proxy, JSON and SSE."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import charts
from bench.peers.summary import Figures

_COLORS = {"json": "#4C72B0", "stream": "#DD8452"}
_SHORT = {"direct": "direct", "nginx": "nginx", "litellm": "LiteLLM", "sidecar": "llmroute"}


def draw(all_figures: list[Figures], connections: int, path: Path, title: str) -> None:
    """Four panels of grouped bars (one bar per mode), log scales where the arms differ by orders of magnitude."""
    plt = charts.pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels: list[tuple[Any, str, Callable[[Figures], float | None], bool, bool]] = [
        (axes[0][0], "added p50 latency at 1 connection (ms, log)", lambda f: f.added_p50, True, False),
        (axes[0][1], f"requests/s at {connections} connections (log)", lambda f: f.rps, True, True),
        (
            axes[1][0],
            f"proxy CPU per request at {connections} connections (µs, log)",
            lambda f: f.cpu_us_n,
            True,
            False,
        ),
        (axes[1][1], "proxy RSS (MB)", lambda f: f.rss_mb, False, False),
    ]
    for ax, label, value, log, with_direct in panels:
        arms = [a for a in _SHORT if a != "direct" or with_direct]
        arms = [a for a in arms if any(f.arm == a for f in all_figures)]
        width = 0.38
        for offset, mode in ((-width / 2, "json"), (width / 2, "stream")):
            by_arm = {f.arm: value(f) for f in all_figures if f.mode == mode}
            xs = [i + offset for i in range(len(arms))]
            heights = [max(by_arm.get(a) or 0.0, 1e-3) for a in arms]
            bars = ax.bar(xs, heights, width, color=_COLORS[mode], label="JSON" if mode == "json" else "SSE stream")
            for bar, arm in zip(bars, arms, strict=True):
                v = by_arm.get(arm)
                if v is not None:
                    text = f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v < 10 else f"{v:.1f}"
                    ax.annotate(
                        text,
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        ax.set_xticks(range(len(arms)), [_SHORT[a] for a in arms])
        ax.set_title(label, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.15)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
