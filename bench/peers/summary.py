"""The peers bench's figures: medians across rounds per arm and mode, and the issue's targets."""

from __future__ import annotations

from dataclasses import dataclass

from bench.common import report
from bench.peers.measure import Sample

TARGET_ADDED_P50_MS = 0.7
TARGET_ADDED_P99_MS = 2.0
TARGET_RPS = 2500.0
TARGET_LITELLM_FACTOR = 50.0
LABEL = {
    "direct": "direct (no proxy)",
    "nginx": "nginx reverse proxy",
    "litellm": "LiteLLM proxy",
    "sidecar": "llmroute sidecar",
}


@dataclass(frozen=True)
class Figures:
    """Medians across rounds of one arm in one mode."""

    arm: str
    mode: str
    p50_1: float
    p99_1: float
    added_p50: float | None
    added_p99: float | None
    rps: float
    p50_n: float
    p99_n: float
    cpu_us_1: float | None
    cpu_us_n: float | None
    cpu_share_n: float | None
    rss_mb: float | None
    failed: int


def _pick(samples: list[Sample], arm: str, mode: str, connections: int) -> list[Sample]:
    return sorted(
        (s for s in samples if (s.arm, s.mode, s.connections) == (arm, mode, connections)), key=lambda s: s.round
    )


def _median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return report.median(present) if present else None


def figures(samples: list[Sample], arm: str, mode: str, connections: int) -> Figures:
    """Added latency is the median of per-round differences to direct in the same round."""
    one, many = _pick(samples, arm, mode, 1), _pick(samples, arm, mode, connections)
    direct = _pick(samples, "direct", mode, 1)
    med = report.median
    rss = [s.rss for s in [*one, *many] if s.rss is not None]

    def added(field: str) -> float | None:
        if arm == "direct":
            return None
        return med([getattr(s.result, field) - getattr(d.result, field) for s, d in zip(one, direct, strict=True)])

    return Figures(
        arm=arm,
        mode=mode,
        p50_1=med([s.result.p50_ms for s in one]),
        p99_1=med([s.result.p99_ms for s in one]),
        added_p50=added("p50_ms"),
        added_p99=added("p99_ms"),
        rps=med([s.result.rps for s in many]),
        p50_n=med([s.result.p50_ms for s in many]),
        p99_n=med([s.result.p99_ms for s in many]),
        cpu_us_1=_median_or_none([s.cpu_us_per_request for s in one]),
        cpu_us_n=_median_or_none([s.cpu_us_per_request for s in many]),
        cpu_share_n=_median_or_none([None if s.cpu_s is None else s.cpu_s / s.result.duration_s for s in many]),
        rss_mb=max(rss) / 2**20 if rss else None,
        failed=sum(s.result.failed for s in [*one, *many]),
    )


def _ms(value: float | None, sign: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.3f} ms" if sign else f"{value:.3f} ms"


def table(all_figures: list[Figures], mode: str, connections: int) -> str:
    """One row per arm for `mode`."""
    rows = []
    for f in (f for f in all_figures if f.mode == mode):
        rows.append(
            [
                LABEL[f.arm],
                _ms(f.p50_1),
                _ms(f.p99_1),
                _ms(f.added_p50, sign=True),
                _ms(f.added_p99, sign=True),
                f"{f.rps:,.0f}",
                _ms(f.p50_n),
                _ms(f.p99_n),
                "" if f.cpu_us_1 is None else f"{f.cpu_us_1:,.0f} µs",
                "" if f.cpu_us_n is None else f"{f.cpu_us_n:,.0f} µs",
                "" if f.cpu_share_n is None else f"{f.cpu_share_n:.0%}",
                "" if f.rss_mb is None else f"{f.rss_mb:.1f} MB",
                str(f.failed),
            ]
        )
    headers = [
        "arm",
        "p50, 1 conn",
        "p99, 1 conn",
        "added p50",
        "added p99",
        f"req/s, {connections} conns",
        f"p50, {connections} conns",
        f"p99, {connections} conns",
        "proxy CPU/req, 1 conn",
        f"proxy CPU/req, {connections} conns",
        f"proxy CPU, {connections} conns (share of a core)",
        "proxy RSS (max)",
        "failed",
    ]
    return report.table(headers, rows)


def _verdict(met: bool, miss: str) -> str:
    return "met" if met else f"missed: {miss}"


def targets(all_figures: list[Figures], connections: int) -> str:
    """The issue's request-path targets for the sidecar, checked in each mode."""
    by = {(f.arm, f.mode): f for f in all_figures}
    rows = []
    for mode in ("json", "stream"):
        side, lite = by.get(("sidecar", mode)), by.get(("litellm", mode))
        if side is None:
            continue
        name = "non-streaming" if mode == "json" else "streaming"
        if side.added_p50 is not None and side.added_p99 is not None:
            rows.append(
                [
                    f"added p50 at 1 connection, {name}",
                    f"≤ +{TARGET_ADDED_P50_MS} ms",
                    _ms(side.added_p50, sign=True),
                    _verdict(
                        side.added_p50 <= TARGET_ADDED_P50_MS, f"by {side.added_p50 - TARGET_ADDED_P50_MS:.3f} ms"
                    ),
                ]
            )
            rows.append(
                [
                    f"added p99 at 1 connection, {name}",
                    f"≤ +{TARGET_ADDED_P99_MS} ms",
                    _ms(side.added_p99, sign=True),
                    _verdict(
                        side.added_p99 <= TARGET_ADDED_P99_MS, f"by {side.added_p99 - TARGET_ADDED_P99_MS:.3f} ms"
                    ),
                ]
            )
        rows.append(
            [
                f"requests/s at {connections} connections, {name}",
                f"≥ {TARGET_RPS:,.0f}",
                f"{side.rps:,.0f}",
                _verdict(side.rps >= TARGET_RPS, f"by {1 - side.rps / TARGET_RPS:.0%}"),
            ]
        )
        if lite is not None and lite.rps > 0:
            factor = side.rps / lite.rps
            rows.append(
                [
                    f"throughput vs LiteLLM (1 worker), {name}",
                    f"≥ {TARGET_LITELLM_FACTOR:.0f}x",
                    f"{factor:.1f}x ({side.rps:,.0f} / {lite.rps:,.0f})",
                    _verdict(factor >= TARGET_LITELLM_FACTOR, f"by {1 - factor / TARGET_LITELLM_FACTOR:.0%}"),
                ]
            )
    return report.table(["target (issue 5)", "target", "measured", "verdict"], rows)


def rounds_table(samples: list[Sample]) -> str:
    """Every wrk run in the order it ran."""
    rows = [
        [
            str(s.round),
            s.mode,
            str(s.connections),
            s.arm,
            f"{s.result.rps:,.0f}",
            f"{s.result.p50_ms:.3f}",
            f"{s.result.p99_ms:.3f}",
            f"{s.result.max_ms:.1f}",
            str(s.result.failed),
            "" if s.cpu_us_per_request is None else f"{s.cpu_us_per_request:,.0f}",
            "" if s.rss is None else f"{s.rss / 2**20:.1f}",
        ]
        for s in samples
    ]
    headers = ["round", "mode", "conns", "arm", "req/s", "p50 ms", "p99 ms", "max ms", "failed", "CPU µs/req", "RSS MB"]
    return report.table(headers, rows)
