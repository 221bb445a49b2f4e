"""`python -m bench.trace.sample`: one real request traced end to end, drawn as a waterfall.

A `llmroute sidecar` process (tracing on: OTEL_EXPORTER_OTLP_ENDPOINT) routes a critical request over three
simulated OpenAI backends in order: the first answers 503, so the request fails over to the second, which
has just slowed down from its usual 30 ms; at its p95 a hedge goes to the third, which answers first. The
collector (llmroute.sim.otlp) receives the request span and its three attempt spans; they are drawn to
docs/img/trace-waterfall.png and listed as markdown on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import charts
from bench.common import sidecar as sidecar_proc
from llmroute.sim import Behavior, Latency, SimProvider
from llmroute.sim.otlp import Collector, Span

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
"""The app's own trace context: the sidecar's spans join its trace."""
WARMUP = 20
SHOWN = (
    "gen_ai.operation.name",
    "gen_ai.provider.name",
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "error.type",
    "http.response.status_code",
    "server.address",
    "llmroute.route",
    "llmroute.backend",
    "llmroute.priority",
    "llmroute.attempt",
    "llmroute.attempts",
    "llmroute.outcome",
    "llmroute.cost_usd",
)


def _routes(sims: dict[str, SimProvider]) -> str:
    price = {"inputPerMTok": 2.5, "outputPerMTok": 10.0}
    backends = [
        {"name": name, "provider": "openai", "url": sim.url, "model": f"{name}-model", "price": price}
        for name, sim in sims.items()
    ]
    spec = {
        "models": ["support-chat"],
        "strategy": "ordered",
        "backends": backends,
        "priorities": {"critical": {"timeout": "5s", "hedge": True}},
    }
    doc = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "support"}, "spec": spec}
    return yaml.safe_dump(doc)


async def run(workdir: Path) -> list[Span]:
    """The scenario; returns the spans of the sample request's trace."""
    collector = Collector()
    await collector.start()
    usual = Behavior(latency=Latency.fixed(0.03), output_tokens=40)
    sims = {name: SimProvider(name, "openai", usual, seed=1) for name in ("primary", "secondary", "tertiary")}
    for sim in sims.values():
        await sim.start()
    routes = workdir / "routes.yaml"
    routes.write_text(_routes(sims))
    os.environ.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_SERVICE_NAME="support-bot", OTEL_BSP_SCHEDULE_DELAY="200"
    )
    sidecar = await asyncio.to_thread(sidecar_proc.start, "sidecar", routes, workdir)
    body = {"model": "support-chat", "messages": [{"role": "user", "content": "Where is my order?"}]}
    try:
        async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=30) as client:
            for _ in range(WARMUP):  # every backend's usual latency is learnt (p95 about 30 ms)
                await client.post("/chat/completions", json=body, headers={"x-llmroute-priority": "critical"})
            sims["primary"].set_behavior(Behavior(error_rate=1.0, error_statuses=(503,)))
            sims["secondary"].set_behavior(Behavior(latency=Latency.fixed(1.2), output_tokens=40))
            answer = await client.post(
                "/chat/completions", json=body, headers={"x-llmroute-priority": "critical", "traceparent": TRACEPARENT}
            )
            answer.raise_for_status()
    finally:
        await asyncio.to_thread(sidecar.process.stop)  # SIGTERM: the sidecar exports what it still holds
        for sim in sims.values():
            await sim.stop()
        await collector.stop()
    return [s for s in collector.spans if s.trace_id == TRACE_ID]


def _color(span: Span) -> str:
    outcome = span.attributes.get("llmroute.outcome")
    if span.kind == "SERVER":
        return "#4c72b0"
    return {"success": "#55a868", "abandoned": "#dd8452"}.get(str(outcome), "#c44e52")


def draw(spans: list[Span], out: Path) -> None:
    """A waterfall: one bar per span, the request on top and its attempts below in start order."""
    plt = charts.pyplot()
    request = next(s for s in spans if s.kind == "SERVER")
    attempts = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    rows = [request, *attempts]
    origin = request.start_ns
    fig, ax = plt.subplots(figsize=(10, 1.1 + 0.75 * len(rows)))
    for i, span in enumerate(rows):
        start = (span.start_ns - origin) / 1e6
        length = (span.end_ns - span.start_ns) / 1e6
        ax.barh(i, length, left=start, height=0.55, color=_color(span))
        attrs = span.attributes
        if "error.type" in attrs:
            status = attrs.get("http.response.status_code")
            outcome = f"error.type={attrs['error.type']}" + (f" (HTTP {status})" if status else "")
        else:
            outcome = str(attrs.get("llmroute.outcome", ""))
        ax.text(start + length + 1, i, f"{length:.0f} ms  {outcome}", va="center", fontsize=9)
    labels = [f"{s.kind.lower()}: {s.name}" for s in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=9)
    ax.invert_yaxis()
    end = max((s.end_ns - origin) / 1e6 for s in rows)
    ax.set_xlim(0, end * 1.35)
    ax.set_xlabel("ms since the sidecar received the request")
    ax.set_title(f"trace {request.trace_id[:8]}…: fail-over after a 503, then a hedge that won", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def table(spans: list[Span]) -> str:
    """The spans as markdown: timing, parent and the attributes the docs explain."""
    request = next(s for s in spans if s.kind == "SERVER")
    ordered = [request, *sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)]
    lines = ["| span | kind | parent | start (ms) | duration (ms) | attributes |", "| --- " * 6 + "|"]
    for span in ordered:
        attrs = ", ".join(f"`{k}={span.attributes[k]}`" for k in SHOWN if k in span.attributes)
        start = (span.start_ns - request.start_ns) / 1e6
        duration = (span.end_ns - span.start_ns) / 1e6
        parent = span.parent_span_id or "none"
        name = f"{span.name} ({span.span_id})"
        lines.append(f"| {name} | {span.kind} | {parent} | {start:.1f} | {duration:.1f} | {attrs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace.sample", description=__doc__)
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "trace-waterfall.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "trace-sample.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-trace-") as tmp:
        spans = asyncio.run(run(Path(tmp)))
    if len(spans) < 2:
        raise SystemExit(f"the collector received {len(spans)} spans of the sample trace")
    draw(spans, args.png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = [s.to_json() for s in spans]
    args.json.write_text(json.dumps(records, indent=2) + "\n")
    print(table(spans))
    print(f"\nwrote {args.png} and {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
