"""`python -m bench.incident`: the 21:00 incident replayed for each routing policy on the same script.

For each policy, fresh simulated providers follow the same schedule (the preferred backend degrades from
~300 ms to ~8.5 s, later a second one fails with 5xx and 429, later both recover) while the same open-loop
traffic (critical / normal / batch, JSON and streaming) arrives; policies run one after the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine, report
from bench.incident import arms, chart, document
from bench.incident.replay import Record, replay
from bench.incident.scenario import phases, traffic
from bench.incident.summary import PolicyRun

ROOT = Path(__file__).resolve().parents[2]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_policy(policy: str, args: argparse.Namespace, workdir: Path) -> PolicyRun:
    arrivals = traffic(args.duration, args.rate, args.seed)
    world = arms.start(policy, workdir, args.duration, args.seed)
    try:
        progress(f"{policy}: {len(arrivals)} requests over {args.duration:g} s")

        async def go() -> list[Record]:
            try:
                return await replay(world.router, arrivals, world.epoch)
            finally:
                await world.router.aclose()

        records = asyncio.run(go())
        stats = world.sim_stats()
    finally:
        world.stop()
    run = PolicyRun(policy, world.router.name, records, stats, world.config, phases(args.duration))
    failed = sum(1 for r in records if not run.ok(r))
    progress(f"{policy}: done, {failed} of {len(records)} failed, p99 {run.latency(records, 0.99) or 0:.3f} s")
    return run


def save(path: Path, runs: list[PolicyRun], meta: dict[str, object]) -> None:
    """Every record of every policy as JSON, so the report can be redrawn without a rerun."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "runs": [r.to_doc() for r in runs]}))


def load(path: Path) -> tuple[list[PolicyRun], dict[str, object]]:
    doc = json.loads(path.read_text())
    meta = doc["meta"]
    return [PolicyRun.from_doc(r, phases(float(meta["duration"]))) for r in doc["runs"]], meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.incident", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of scripted traffic per policy")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (Poisson arrivals)")
    parser.add_argument("--seed", type=int, default=2100)
    parser.add_argument("--policies", default=",".join(arms.POLICIES), help=f"comma list of {', '.join(arms.POLICIES)}")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results" / "incident.json", help="raw records (JSON)"
    )
    parser.add_argument("--report-only", action="store_true", help="redraw the report from --results, run nothing")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    if args.report_only:
        runs, meta = load(args.results)
    else:
        chosen = [p for p in args.policies.split(",") if p]
        unknown = set(chosen) - set(arms.POLICIES)
        if unknown:
            parser.error(f"unknown policies {sorted(unknown)}")
        meta = {
            "command": shlex.join(["python", "-m", "bench.incident", *(sys.argv[1:] if argv is None else argv)]),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "duration": args.duration,
            "rate": args.rate,
            "seed": args.seed,
            "commit": machine.git_commit(),
            "load_start": machine.load_average(),
        }
        runs = []
        with tempfile.TemporaryDirectory(prefix="bench-incident-") as tmp:
            for policy in chosen:
                runs.append(run_policy(policy, args, Path(tmp)))
        meta["load_end"] = machine.load_average()
        save(args.results, runs, meta)
        progress(f"records saved to {args.results}")
    print(document.headline(runs))
    if not args.no_docs:
        image = args.docs.parent / "img" / "incident.png"
        chart.draw(runs, image)
        report.replace_section(args.docs, "incident", document.render(runs, meta, "img/incident.png"))
        progress(f"written to {args.docs} and {image}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
