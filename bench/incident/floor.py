"""`python -m bench.incident.floor --results F`: what the drawn schedules allow a router that learns of a
transition only from answers, computed from the keyed latencies (no run).

The oracle switches backends the instant the script does. Any real router learns of it from answers: a
backend's slowdown once a request to it has outlived its healthy p95, a recovery once a request sent after
it comes back fast. The "evidence router" modelled here is the best of those: it follows the oracle's choice
as it was `d` seconds earlier, `d` being the healthy median of the faster of the two backends concerned (the
earliest any answer could tell), and a request it sent to a backend that has just degraded is rescued at once
after that backend's healthy p95. Its latencies, like the oracle's, are the keyed draws the providers make
for the oracle's own requests (same keys, same send times), without machine overhead; the ratio of the two
p99s per phase is the floor under llmroute's ratio that no router without the script can beat.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from bench.incident.drawn import JUDGED, Draw
from bench.incident.summary import PolicyRun, quantile
from llmroute.sim import Behavior
from llmroute.sim.provider import keyed_draws

KEY = re.compile(r"\[sim-draw ([^\]]+)\]")


def latency(behavior: Behavior, key: str, stream: bool) -> float:
    """What the provider does for a keyed request (llmroute.sim.provider): the keyed latency draw, plus a
    stream's tokens after the first."""
    if not stream:
        return behavior.latency.sample(keyed_draws(key))
    first = (behavior.ttft or behavior.latency).sample(keyed_draws(key))
    return first + (behavior.output_tokens - 1) * behavior.token_delay


def evidence_latency(incident: Draw, t: float, key: str, stream: bool) -> float:
    """The evidence router's latency for a request sent at `t` (seconds into the script)."""
    schedules = incident.schedules(0.0)
    new = incident.oracle_choice(t)
    on_new = latency(schedules[new].at(t), key, stream)
    began = max(p.start for p in incident.phases() if p.start <= t)
    old = incident.oracle_choice(began - 1e-6) if began > 0 else new
    if old == new or t - began >= min(incident.medians[old], incident.medians[new]):
        return on_new
    if old == incident.degrades and old in incident.unhealthy(t):  # rescued after its healthy p95
        return incident.medians[old] * incident.jitter + on_new
    if old in incident.unhealthy(t):  # failing with an immediate 5xx: the next backend at once
        return on_new
    return latency(schedules[old].at(t), key, stream)  # not yet known to be beaten: still used


def floors(incident: Draw, oracle: PolicyRun) -> dict[str, tuple[float, float]]:
    """Per judged phase: the oracle's modelled p99 and the evidence router's, in seconds."""
    schedules = incident.schedules(0.0)
    out = {}
    for phase in JUDGED:
        records = oracle.select(phase=phase)
        keyed = [(r.arrival.at, m[1], r.arrival.stream) for r in records if (m := KEY.search(r.arrival.prompt))]
        mine = [latency(schedules[incident.oracle_choice(t)].at(t), k, s) for t, k, s in keyed]
        best = [evidence_latency(incident, t, k, s) for t, k, s in keyed]
        p_oracle, p_best = quantile(mine, 0.99), quantile(best, 0.99)
        if p_oracle and p_best:
            out[phase] = (p_oracle, p_best)
    return out


CAUGHT_S = 0.2
"""A request that took this much longer than its keyed latency on the backend that answered it waited on
another backend first (caught on one that had degraded, or failed over)."""


def delays(incident: Draw, run: PolicyRun) -> tuple[float | None, float | None]:
    """From llmroute's records: onset, the send time (after the degradation) of the last request of the
    degraded phase's first 3 s that was caught (`CAUGHT_S`); recovery, when the first run of 10 requests of
    the recovered phase of which 9 went to the oracle's backend began. Seconds after the transition."""
    phases = {p.name: p for p in incident.phases()}
    schedules = incident.schedules(0.0)
    degraded, recovered = phases["degraded"], phases["recovered"]
    caught = []
    for r in run.select(phase="degraded"):
        key, backend = KEY.search(r.arrival.prompt), r.outcome.final.backend
        if key and backend and r.arrival.at < degraded.start + 3.0:
            expected = latency(schedules[backend].at(r.arrival.at), key[1], r.arrival.stream)
            if r.outcome.seconds - expected > CAUGHT_S:
                caught.append(r.arrival.at - degraded.start)
    records = run.select(phase="recovered")
    choice = incident.oracle_choice(recovered.start)
    back = next(
        (
            r.arrival.at - recovered.start
            for i, r in enumerate(records)
            if sum(x.outcome.final.backend == choice for x in records[i : i + 10]) >= 9
        ),
        None,
    )
    return (max(caught) if caught else None), back


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incident.floor", description=__doc__)
    parser.add_argument("--results", type=Path, required=True, help="records of python -m bench.incident.seeds")
    args = parser.parse_args(argv)
    doc = json.loads(args.results.read_text())
    print("| seed | phase | oracle p99 ms (model) | evidence router p99 ms (model) | floor ratio |")
    print("| ---: | --- | ---: | ---: | ---: |")
    runs = []
    for seed in doc["seeds"]:
        incident = Draw.from_doc(seed["draw"])
        by_key = {r["key"]: PolicyRun.from_doc(r, incident.phases()) for r in seed["runs"]}
        runs.append((incident, by_key["llmroute-latency"]))
        for phase, (p_oracle, p_best) in floors(incident, by_key["oracle"]).items():
            figures = f"{1000 * p_oracle:,.0f} | {1000 * p_best:,.0f} | {p_best / p_oracle:.2f}x"
            print(f"| {incident.seed} | {phase} | {figures} |")
    print("\n| seed | last request caught at onset (s after) | traffic back after recovery (s after) |")
    print("| ---: | ---: | ---: |")
    for incident, run in runs:
        onset, back = (("-" if d is None else f"{d:.1f}") for d in delays(incident, run))
        print(f"| {incident.seed} | {onset} | {back} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
