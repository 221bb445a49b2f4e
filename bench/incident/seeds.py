"""`python -m bench.incident.seeds`: the incident on randomly drawn schedules, one per seed, for llmroute
(strategy latency) and the oracle; the worst ratio of their phase p99s is the figure (target <= 1.3x).

Each seed draws latencies, jitter, which backend degrades, the failure rate of the next one, phase lengths
and the number of closed-loop clients (bench/incident/drawn.py); both arms get fresh providers following
the same drawn schedule. A seed takes about twice its drawn duration (26-44 s) plus start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, report
from bench.incident import arms, seeds_report
from bench.incident.drawn import Draw, draw
from bench.incident.replay import Record, closed_loop
from bench.incident.scenario import PROMPTS, Arrival
from bench.incident.summary import PolicyRun

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("llmroute-latency", "oracle")


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_arm(arm: str, incident: Draw, workdir: Path) -> PolicyRun:
    """One arm on fresh providers following `incident`, its clients closed-loop at normal priority."""
    path = workdir / f"draw-{incident.seed}.json"
    incident.save(path)
    world = arms.start(arm, workdir, incident.duration, incident.seed, drawn=path)
    rng = random.Random(incident.seed)

    def arrival(t: float) -> Arrival:
        return Arrival(t, "normal", rng.random() < incident.stream_share, rng.choice(PROMPTS))

    try:

        async def go() -> list[Record]:
            try:
                return await closed_loop(world.router, incident.clients, incident.duration, world.epoch, arrival)
            finally:
                await world.router.aclose()

        records = asyncio.run(go())
        stats = world.sim_stats()
    finally:
        world.stop()
    return PolicyRun(arm, world.router.name, records, stats, world.config, incident.phases())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incident.seeds", description=__doc__)
    parser.add_argument("--seeds", default="1,2,3", help="comma list of seeds, each a drawn incident")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results" / "incident-seeds.json", help="raw records"
    )
    parser.add_argument("--report-only", action="store_true", help="redraw the report from --results, run nothing")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    if args.report_only:
        doc = json.loads(args.results.read_text())
        meta = doc["meta"]
        results = []
        for seed in doc["seeds"]:
            incident = Draw.from_doc(seed["draw"])
            runs = [PolicyRun.from_doc(r, incident.phases()) for r in seed["runs"]]
            results.append(seeds_report.SeedRun(incident, runs))
    else:
        meta = {
            "command": shlex.join(["python", "-m", "bench.incident.seeds", *(sys.argv[1:] if argv is None else argv)]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "commit": machine.git_commit(),
            "load_start": machine.load_average(),
        }
        results = []
        with tempfile.TemporaryDirectory(prefix="bench-incident-seeds-") as tmp:
            for seed in [int(s) for s in args.seeds.split(",") if s]:
                incident = draw(seed)
                progress(f"seed {seed}: {incident.clients} clients, {incident.duration:.0f} s")
                runs = [run_arm(arm, incident, Path(tmp)) for arm in ARMS]
                results.append(seeds_report.SeedRun(incident, runs))
                progress(f"seed {seed}: worst phase ratio {seeds_report.worst(results[-1:])[0]:.2f}x")
        meta["load_end"] = machine.load_average()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        seeds = [{"draw": dataclasses.asdict(r.draw), "runs": [run.to_doc() for run in r.runs]} for r in results]
        args.results.write_text(json.dumps({"meta": meta, "seeds": seeds}))
        progress(f"records saved to {args.results}")
    print(seeds_report.table(results))
    if not args.no_docs:
        image = args.docs.parent / "img" / "incident-seeds.png"
        seeds_report.draw_chart(results, image)
        body = seeds_report.render(results, meta, "img/incident-seeds.png")
        report.replace_section(args.docs, "incident-seeds", body)
        progress(f"written to {args.docs} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
