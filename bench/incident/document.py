"""The incident section of docs/performance.md: headline, targets, details per phase and priority,
where the answers came from, failures with the router's messages, configs and method."""

from __future__ import annotations

from collections.abc import Mapping

from bench.common import machine, report
from bench.incident import policies
from bench.incident.scenario import PROVIDERS, STREAM_SHARE, Phase, phases
from bench.incident.summary import PRIORITY_NAMES, PolicyRun, ms

ORACLE_FACTOR = 1.3
LEAD_FACTOR = 5.0


def _pct(value: float) -> str:
    return "" if value != value else f"{value:.1%}"  # NaN: no requests


def headline(runs: list[PolicyRun]) -> str:
    """One row per policy: success, latency overall and p99 per phase, spend."""
    names = [p.name for p in runs[0].phases]
    rows = []
    for run in runs:
        everything = run.records
        row = [run.name, str(len(everything)), _pct(run.success(everything))]
        row += [_pct(run.success(run.select(priority=p))) for p in PRIORITY_NAMES]
        row += [ms(run.latency(everything, q)) for q in (0.5, 0.95, 0.99)]
        row += [ms(run.latency(run.select(phase=name), 0.99)) for name in names]
        row += [f"{run.spend_answered():.4f}", f"{run.spend_billed():.4f}"]
        rows.append(row)
    headers = ["policy", "requests", "success", *(f"success {p}" for p in PRIORITY_NAMES), "p50 ms", "p95 ms", "p99 ms"]
    headers += [f"p99 ms {name}" for name in names] + ["spend USD (answers)", "spend USD (billed)"]
    return report.table(headers, rows)


def _by_key(runs: list[PolicyRun]) -> Mapping[str, PolicyRun]:
    return {r.key: r for r in runs}


def targets(runs: list[PolicyRun]) -> str:
    """The issue's routing targets for each llmroute strategy that ran (needs the oracle, round-robin and
    LiteLLM runs for the ratios)."""
    by = _by_key(runs)
    ours = [r for r in runs if r.key.startswith("llmroute-")]
    if not ours:
        return "(no llmroute policy ran)"
    names = [p.name for p in runs[0].phases]
    rows: list[list[str]] = []

    def cell(ok: bool, text: str) -> str:
        return f"{'met' if ok else '**missed**'}: {text}"

    row = ["100% success, critical and normal"]
    for run in ours:
        chosen = run.select(priority="critical") + run.select(priority="normal")
        failed = sum(1 for r in chosen if not run.ok(r))
        row.append(cell(failed == 0, f"{run.success(chosen):.2%} ({failed} of {len(chosen)} failed)"))
    rows.append(row)
    oracle = by.get("oracle")
    for name in names:
        row = [f"p99 {name} ≤ {ORACLE_FACTOR}x oracle's"]
        for run in ours:
            mine = run.latency(run.select(phase=name), 0.99)
            theirs = oracle.latency(oracle.select(phase=name), 0.99) if oracle else None
            if mine is None or not theirs:
                row.append("")
                continue
            ratio = mine / theirs
            row.append(cell(ratio <= ORACLE_FACTOR, f"{ratio:.2f}x ({ms(mine)} vs {ms(theirs)} ms)"))
        rows.append(row)
    for key in ("round-robin", "litellm"):
        other = by.get(key)
        row = [f"p99 degraded ≥ {LEAD_FACTOR:.0f}x lower than {other.name if other else key}"]
        for run in ours:
            mine = run.latency(run.select(phase="degraded"), 0.99)
            theirs = other.latency(other.select(phase="degraded"), 0.99) if other else None
            if not mine or theirs is None:
                row.append("")
                continue
            factor = theirs / mine
            row.append(cell(factor >= LEAD_FACTOR, f"{factor:.1f}x lower ({ms(mine)} vs {ms(theirs)} ms)"))
        rows.append(row)
    return report.table(["target (issue 5)", *(r.key.removeprefix("llmroute-") for r in ours)], rows)


def detail(runs: list[PolicyRun]) -> str:
    """p50/p95/p99 and success per phase and priority."""
    rows = []
    for run in runs:
        for phase in run.phases:
            row = [run.name, phase.name]
            for priority in PRIORITY_NAMES:
                chosen = run.select(phase.name, priority)
                row.append(" / ".join(ms(run.latency(chosen, q)) for q in (0.5, 0.95, 0.99)))
                row.append(_pct(run.success(chosen)))
            rows.append(row)
    headers = ["policy", "phase"]
    for priority in PRIORITY_NAMES:
        headers += [f"{priority} p50 / p95 / p99 ms", f"{priority} success"]
    return report.table(headers, rows)


def routing(runs: list[PolicyRun]) -> str:
    """Where the answers came from in each phase, and what each provider received in all."""
    rows = []
    for run in runs:
        row = [run.name]
        for phase in run.phases:
            counts = run.answered_by(phase.name)
            total = sum(counts.values()) or 1
            row.append(
                ", ".join(f"{name} {counts[name] / total:.0%}" for name in (p.name for p in PROVIDERS) if counts[name])
            )
        sent = run.sent_to()
        row.append(", ".join(f"{name} {sent.get(name, 0)}" for name in (p.name for p in PROVIDERS)))
        rows.append(row)
    headers = [
        "policy",
        *(f"answered by, {p.name}" for p in runs[0].phases),
        "requests received (all attempts, probes)",
    ]
    return report.table(headers, rows)


def failures(runs: list[PolicyRun]) -> str:
    """For each policy with failures: counts by phase, priority and error, and the messages the app got."""
    parts = []
    for run in runs:
        counts = run.failures()
        if not counts:
            continue
        lines = [f"**{run.name}**: {sum(counts.values())} failed requests", ""]
        rows = [[phase, priority, error, str(n)] for (phase, priority, error), n in sorted(counts.items())]
        lines.append(report.table(["phase", "priority", "error", "requests"], rows))
        lines.append("")
        lines += [f"- {example}" for example in run.failure_examples()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) or "No request failed under any policy."


def _phase_lines(all_phases: list[Phase]) -> str:
    return "\n".join(f"- {p.name} ({p.start:g}-{p.end:g} s): {p.story}" for p in all_phases)


def _providers() -> str:
    rows = []
    for p in PROVIDERS:
        h = p.healthy
        ttft = h.ttft or h.latency
        rows.append(
            [
                p.name,
                p.model,
                f"lognormal median {1000 * h.latency.a:.0f} ms, p95 {1000 * h.latency.b:.0f} ms",
                f"first token: median {1000 * ttft.a:.0f} ms, then {h.output_tokens} tokens"
                f" {1000 * h.token_delay:.0f} ms apart",
                f"{p.price_in:g} / {p.price_out:g}",
                str(p.quality),
            ]
        )
    return report.table(
        ["provider", "model", "JSON answer (healthy)", "stream (healthy)", "USD per MTok in / out", "quality"], rows
    )


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def render(runs: list[PolicyRun], meta: Mapping[str, object], image: str) -> str:
    duration = float(str(meta["duration"]))
    by = _by_key(runs)
    sidecar_config = next((r.config for r in runs if r.key == "llmroute-latency"), "") or next(
        (r.config for r in runs if r.key.startswith("llmroute-")), ""
    )
    litellm_config = by["litellm"].config if "litellm" in by else ""
    facts = report.table(["", ""], [[k, v] for k, v in machine.describe()])
    return f"""\
## Routing through the 21:00 incident (bench/incident)

Measured {meta["date"]} (llmroute {meta["commit"]}) with

    {meta["command"]}

![latency of every request over time, per policy]({image})

Each dot is one request (x: when it was sent, y: how long the app waited for its answer or error, log
scale), coloured by priority; red crosses are failed requests; the black line is the p95 per 1-s bucket.
Shaded: the degraded and cascade phases.

### Targets

{targets(runs)}

### Every policy

{headline(runs)}

Latency = seconds from sending until the app had the whole answer (streams: the `[DONE]` event) or its
error, failed requests included; percentiles by nearest rank. Spend (answers) = the usage of the answers
the app received at the answering provider's prices; spend (billed) = every request the providers accepted
(including hedges that lost, attempts given up for time, probes) at the mean usage of this run's answers.

### Per phase and priority

<details><summary>p50 / p95 / p99 and success for every policy, phase and priority</summary>

{detail(runs)}

</details>

### Where the answers came from

{routing(runs)}

### Failures

{failures(runs)}

### Method

- Providers: three simulated OpenAI-compatible providers (`llmroute.sim.SimProvider`, real HTTP on
  127.0.0.1), started afresh for every policy in their own process, following one schedule from a shared
  start time:

{_providers()}

{_phase_lines(phases(duration))}

- Traffic: the same {sum(1 for _ in runs[0].records)} requests for every policy: Poisson arrivals at
  {meta["rate"]} per second for {duration:g} s (open loop: each request is sent at its time whatever
  the previous ones are doing), seed {meta["seed"]}; 20% critical, 50% normal, 30% batch; {STREAM_SHARE:.0%} of
  critical and normal requests stream (`stream_options.include_usage`); `max_tokens` 64; the app (httpx,
  one client per destination) waits at most {policies.APP_TIMEOUT_S:g} s for any answer and never retries itself.
- Policies: round-robin (client-side, each request to the next provider, no retry); primary with
  timeout then fallback (client-side: fast, then mid, then cheap, each with a {policies.PRIMARY_TIMEOUT_S:g} s
  timeout to the first byte, next on timeout, 5xx, 429 or connection error); LiteLLM's proxy (one
  worker, `latency-based-routing`, 2 retries, its cooldowns); `llmroute sidecar` with the route below,
  once per strategy (only `strategy` changes; the request's `x-llmroute-priority` header picks the
  deadline); the oracle (client-side: always the provider the script keeps fastest and healthy at that
  moment, one attempt).
- Everything on one {machine.describe()[0][1]}-core machine; policies run one after the other. Load average
  (1 min): {meta["load_start"]} at the start, {meta.get("load_end", "?")} at the end.

The llmroute route (the latency arm; the other arms differ only in `strategy`):

{_indent(sidecar_config)}

LiteLLM's config:

{_indent(litellm_config)}

### Machine

{facts}
"""
