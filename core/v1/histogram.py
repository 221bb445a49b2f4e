"""The fixed latency buckets of llmroute.v1.Histogram, and quantiles of (merged) bucket counts.

Sidecars and operator share these bounds so histograms of many sidecars add up bucket by bucket.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Upper bounds in milliseconds; bucket len(BOUNDS_MS) holds everything above the last one.
BOUNDS_MS: tuple[float, ...] = (
    5, 10, 25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500,
    2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 60000,
)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1


def bucket(ms: float) -> int:
    """Index of the bucket an observation of `ms` milliseconds falls into."""
    return bisect_left(BOUNDS_MS, ms)


def merge(into: list[int], counts: Sequence[int]) -> None:
    """Add `counts` to `into` bucket by bucket; extra buckets of a newer sidecar go to the last one."""
    for i, count in enumerate(counts):
        into[min(i, BUCKETS - 1)] += count


def quantile(counts: Sequence[int], q: float) -> float:
    """The q-quantile in ms, linearly interpolated inside its bucket (0 when there is no observation).

    Like Prometheus' histogram_quantile: observations past the last bound report the last bound.
    """
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(BOUNDS_MS):
                return float(BOUNDS_MS[-1])
            lower = 0.0 if i == 0 else float(BOUNDS_MS[i - 1])
            return lower + (float(BOUNDS_MS[i]) - lower) * (rank - seen) / count
        seen += count
    return float(BOUNDS_MS[-1])
