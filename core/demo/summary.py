"""The demo's results: figures per phase and per priority (requests, success, latency percentiles, spend,
traffic share per backend), as text tables and as JSON."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from llmroute.demo.scenario import Phase, phase_at
from llmroute.demo.traffic import API_MIX, Result

CHAT_ROUTE_APIS = frozenset({"chat", "messages"})
"""The APIs whose requests go to the chat route, the one the incident strikes."""

PRIORITIES = ("critical", "normal", "batch")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile (q in 0..1) of unsorted `values`, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def stats(results: Iterable[Result], backends: Sequence[str]) -> dict[str, Any]:
    """Figures of a group of requests. Latency percentiles cover every request (a failure is as long as the
    app waited for it); share is the part of successful answers each backend gave."""
    group = list(results)
    ok = [r for r in group if r.ok]
    latencies = [r.latency * 1000 for r in group]
    answered = Counter(r.backend for r in ok if r.backend)
    return {
        "requests": len(group),
        "succeeded": len(ok),
        "success_rate": len(ok) / len(group) if group else None,
        "latency_ms": {f"p{q}": percentile(latencies, q / 100) for q in (50, 95, 99)},
        "spend_usd": sum(r.cost for r in ok),
        "share": {b: answered[b] / len(ok) if ok else 0.0 for b in backends},
        "errors": dict(Counter(r.error for r in group if not r.ok and r.error)),
        "error_examples": list(dict.fromkeys(r.detail for r in group if not r.ok and r.detail))[:3],
    }


def timeline(
    results: Iterable[Result], backends: Sequence[str], duration: float, step: float = 1.0
) -> list[dict[str, Any]]:
    """Per `step` seconds (by start time): requests, success rate and share per backend, to see the
    router move traffic away from a degraded backend and back."""
    buckets: list[list[Result]] = [[] for _ in range(max(math.ceil(duration / step), 1))]
    for result in results:
        buckets[min(int(result.started // step), len(buckets) - 1)].append(result)
    return [
        {"t_s": i * step, **{k: v for k, v in stats(group, backends).items() if k in _TIMELINE_FIELDS}}
        for i, group in enumerate(buckets)
    ]


_TIMELINE_FIELDS = ("requests", "success_rate", "share")


def summarise(
    results: list[Result], phases: list[Phase], backends: Sequence[str], router: dict[str, float], duration: float
) -> dict[str, Any]:
    """The whole run as a JSON-ready document. Phases and priorities tell the chat route's story (chat
    completions and Anthropic Messages for model chat); every API has its own line under `apis`."""
    chat = [r for r in results if r.api in CHAT_ROUTE_APIS]
    by_phase: dict[str, list[Result]] = {p.name: [] for p in phases}
    for result in chat:
        by_phase[phase_at(phases, result.started).name].append(result)
    return {
        "duration_s": duration,
        "backends": list(backends),
        "phases": [
            {
                "name": p.name,
                "start_s": round(p.start, 2),
                "end_s": round(p.end, 2),
                "story": p.story,
                **stats(by_phase[p.name], backends),
                "priorities": {
                    prio: stats((r for r in by_phase[p.name] if r.priority == prio), backends) for prio in PRIORITIES
                },
            }
            for p in phases
        ],
        "priorities": {prio: stats((r for r in chat if r.priority == prio), backends) for prio in PRIORITIES},
        "apis": {api: stats((r for r in results if r.api == api), backends) for api, _ in API_MIX},
        "total": stats(chat, backends),
        "router": router,
        "timeline": timeline(results, backends, duration),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _row(label: str, figures: dict[str, Any], backends: Sequence[str]) -> list[str]:
    latency = figures["latency_ms"]
    return [
        label,
        str(figures["requests"]),
        _pct(figures["success_rate"]),
        _ms(latency["p50"]),
        _ms(latency["p95"]),
        _ms(latency["p99"]),
        f"{figures['spend_usd']:.4f}",
        *(f"{100 * figures['share'][b]:.0f}%" for b in backends),
    ]


_STYLE = re.compile(r"\x1b\[[0-9;]*m")


def _pad(cell: str, width: int, left: bool) -> str:
    """`cell` padded to `width` visible characters (ANSI colour codes take no room on screen)."""
    padding = " " * (width - len(_STYLE.sub("", cell)))
    return cell + padding if left else padding + cell


def table(rows: list[list[str]]) -> str:
    """Rows as aligned columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(_STYLE.sub("", row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(_pad(cell, widths[i], i == 0) for i, cell in enumerate(row)) for row in rows)


def render(summary: dict[str, Any]) -> str:
    """The summary as the two tables printed at the end of the demo, then the router's counters."""
    backends = summary["backends"]
    header = ["", "requests", "success", "p50 ms", "p95 ms", "p99 ms", "spend $", *(f"{b}" for b in backends)]
    phases = [header] + [_row(p["name"], p, backends) for p in summary["phases"]]
    phases.append(_row("all", summary["total"], backends))
    priorities = [["priority", *header[1:]]] + [
        _row(name, figures, backends) for name, figures in summary["priorities"].items()
    ]
    apis = [["API", *header[1:]]] + [_row(name, figures, backends) for name, figures in summary["apis"].items()]
    router = summary["router"]
    counters = (
        f"failovers {router['failovers']:.0f}, hedges {router['hedges_sent']:.0f} sent / "
        f"{router['hedges_won']:.0f} won, retries {router['retries']:.0f}, ejections {router['ejections']:.0f}"
    )
    return (
        "By phase, the chat route (share = part of successful answers per backend)\n"
        + table(phases)
        + "\n\nBy priority\n"
        + table(priorities)
        + "\n\nBy API (chat completions and Anthropic Messages for model chat, embeddings for search)\n"
        + table(apis)
        + f"\n\nRouter: {counters}\n"
    )
