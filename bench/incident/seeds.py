"""`python -m bench.incident.seeds`: the incident on randomly drawn schedules, one per seed, for llmroute
(strategy latency) and the oracle; the worst ratio of their phase p99s is the figure (target <= 1.3x).

Each seed draws latencies, jitter, which backend degrades, the failure rate of the next one, phase lengths
and the number of closed-loop clients (bench/incident/drawn.py); both arms run at the same time, each on
fresh providers following the same drawn schedule from one epoch. A seed takes its drawn duration (26-44 s)
plus start-up.
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
from functools import partial
from pathlib import Path

from bench.common import machine, report
from bench.incident import arms, seeds_report
from bench.incident.drawn import Draw, draw
from bench.incident.replay import Record, closed_loop
from bench.incident.scenario import PROMPTS, Arrival
from bench.incident.summary import PolicyRun

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("llmroute-latency", "oracle")
START_LEAD_S = 12.0
"""The script starts this long after a seed's processes are launched: time to start a sidecar and two
providers' processes on a busy machine, so no arm misses the script's beginning."""


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def arrival(incident: Draw, app: int, number: int, t: float) -> Arrival:
    """App `app`'s `number`-th request, the same in both arms: stream or not and prompt drawn from its key, which
    the prompt carries (`[sim-draw KEY]`) so that the providers draw its latency from the key too. The arms then
    compare routing on the same requests, not two independent draws of a lognormal tail: a phase's p99 is
    one of its few slowest requests."""
    key = f"{incident.seed}:{app}:{number}"
    rng = random.Random(key)
    stream = rng.random() < incident.stream_share
    return Arrival(t, "normal", stream, f"{rng.choice(PROMPTS)} [sim-draw {key}]")


def run_seed(incident: Draw, workdir: Path) -> list[PolicyRun]:
    """Both arms at the same time, each on its own fresh providers following `incident` from one epoch, so
    they share whatever else the machine is doing; clients closed-loop at normal priority."""
    path = workdir / f"draw-{incident.seed}.json"
    incident.save(path)
    worlds: list[arms.World] = []
    epoch = time.time() + START_LEAD_S
    try:
        for arm in ARMS:
            worlds.append(arms.start(arm, workdir, incident.duration, incident.seed, drawn=path, epoch=epoch))
        if time.time() > epoch:
            progress(f"seed {incident.seed}: started {time.time() - epoch:.1f} s into the script (a busy machine)")

        async def go(world: arms.World) -> list[Record]:
            try:
                return await closed_loop(
                    world.router, incident.clients, incident.duration, world.epoch, partial(arrival, incident)
                )
            finally:
                await world.router.aclose()

        async def both() -> list[list[Record]]:
            return list(await asyncio.gather(*(go(w) for w in worlds)))

        records = asyncio.run(both())
        stats = [w.sim_stats() for w in worlds]
    finally:
        for world in worlds:
            world.stop()
    return [
        PolicyRun(arm, w.router.name, r, s, w.config, incident.phases())
        for arm, w, r, s in zip(ARMS, worlds, records, stats, strict=True)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incident.seeds", description=__doc__)
    parser.add_argument("--seeds", default="1,2,3", help="comma list of seeds, each a drawn incident")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results" / "incident-seeds.json", help="raw records"
    )
    parser.add_argument("--report-only", action="store_true", help="redraw the report from --results, run nothing")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="only print the table")
    parser.add_argument("--chart", type=Path, help="also draw the chart to this PNG (with --no-docs too)")
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
                runs = run_seed(incident, Path(tmp))
                results.append(seeds_report.SeedRun(incident, runs))
                progress(f"seed {seed}: worst phase ratio {seeds_report.worst(results[-1:])[0]:.2f}x")
        meta["load_end"] = machine.load_average()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        seeds = [{"draw": dataclasses.asdict(r.draw), "runs": [run.to_doc() for run in r.runs]} for r in results]
        args.results.write_text(json.dumps({"meta": meta, "seeds": seeds}))
        progress(f"records saved to {args.results}")
    print(seeds_report.table(results))
    if args.chart is not None:
        seeds_report.draw_chart(results, args.chart)
        progress(f"chart drawn to {args.chart}")
    if not args.no_docs:
        image = args.docs.parent / "img" / "incident-seeds.png"
        seeds_report.draw_chart(results, image)
        body = seeds_report.render(results, meta, "img/incident-seeds.png")
        report.replace_section(args.docs, "incident-seeds", body)
        progress(f"written to {args.docs} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
