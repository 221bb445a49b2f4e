"""`--soak N`: N requests through one sidecar at 64 connections, its RSS sampled along the way."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import charts, procs, report, wrk
from bench.peers.stack import MODEL, Stack

TARGET_MB = 80.0
TARGET_GROWTH = 0.10


@dataclass
class Soak:
    """RSS after each wrk chunk (requests so far, MB), the peak seen by a 0.2 s sampler, and the counts."""

    before_mb: float = 0.0
    points: list[tuple[int, float]] = field(default_factory=list)
    peak_mb: float = 0.0
    requests: int = 0
    failed: int = 0
    seconds: float = 0.0
    rps: list[float] = field(default_factory=list)

    @property
    def growth(self) -> float:
        """From the first sample (after the first chunk: pools and caches warm) to the last."""
        first, last = self.points[0][1], self.points[-1][1]
        return (last - first) / first


def run(stack: Stack, total: int, connections: int, chunk_s: float, wrk_cpus: str | None) -> Soak:
    """Drive wrk in `chunk_s`-second chunks until `total` requests completed, sampling the sidecar's RSS."""
    pid = stack.processes["sidecar"].pid
    soak = Soak(before_mb=procs.rss_bytes([pid]) / 2**20)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            soak.peak_mb = max(soak.peak_mb, procs.rss_bytes([pid]) / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        while soak.requests < total:
            result = wrk.run(
                stack.urls["sidecar"]["json"],
                connections=connections,
                duration_s=chunk_s,
                env={"BENCH_MODEL": MODEL["json"]},
                cpus=wrk_cpus,
            )
            stack.check()
            soak.requests += result.requests
            soak.failed += result.failed
            soak.rps.append(result.rps)
            rss = procs.rss_bytes([pid]) / 2**20
            soak.points.append((soak.requests, rss))
            soak.peak_mb = max(soak.peak_mb, rss)
            print(
                f"soak: {soak.requests:>9,} requests  {result.rps:7,.0f} req/s  RSS {rss:6.1f} MB"
                + (f"  failed {result.failed}" if result.failed else ""),
                file=sys.stderr,
                flush=True,
            )
    finally:
        stop.set()
        sampler.join()
    soak.seconds = time.monotonic() - started
    return soak


def draw(soak: Soak, path: Path) -> None:
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    xs = [n / 1e6 for n, _ in soak.points]
    ax.plot(xs, [mb for _, mb in soak.points], marker=".", color="#4C72B0", label="sidecar RSS")
    ax.axhline(TARGET_MB, color="#C44E52", linestyle="--", linewidth=1, label=f"target {TARGET_MB:.0f} MB")
    ax.set_xlabel("requests served (millions)")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max(TARGET_MB, soak.peak_mb) * 1.15)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"llmroute sidecar RSS over {soak.requests:,} requests at 64 connections", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(soak: Soak) -> str:
    """Start, end, peak and growth against the issue's target."""
    first = soak.points[0]
    end = soak.points[-1][1]
    size_ok, growth_ok = soak.peak_mb < TARGET_MB, soak.growth < TARGET_GROWTH
    rows = [
        ["requests served (wrk, 64 connections)", f"{soak.requests:,}", ""],
        ["failed requests", f"{soak.failed:,}", ""],
        ["duration, median throughput", f"{soak.seconds:.0f} s, {report.median(soak.rps):,.0f} req/s", ""],
        ["RSS before the first request", f"{soak.before_mb:.1f} MB", ""],
        [f"RSS after the first {first[0]:,} requests (warm)", f"{first[1]:.1f} MB", ""],
        ["RSS at the end", f"{end:.1f} MB", ""],
        [
            "RSS peak (sampled every 0.2 s)",
            f"{soak.peak_mb:.1f} MB",
            f"< {TARGET_MB:.0f} MB: " + ("met" if size_ok else f"missed by {soak.peak_mb - TARGET_MB:.1f} MB"),
        ],
        [
            "growth, warm to end",
            f"{soak.growth:+.1%}",
            f"< {TARGET_GROWTH:.0%}: "
            + ("met" if growth_ok else f"missed by {soak.growth - TARGET_GROWTH:.1%} points"),
        ],
    ]
    return report.table(["", "measured", "target (issue 5)"], rows)
