"""`python -m bench.incident.sims [--draw FILE] DURATION EPOCH SEED PORT...`: the scenario's providers in
their own process, on the given ports, following the script (or the drawn incident in FILE, see drawn.py)
from EPOCH (time.time()); serves until SIGTERM."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.incident.drawn import Draw
from bench.incident.scenario import PROVIDERS, schedule
from llmroute.http import run
from llmroute.sim import SimBackend, SimProvider, serve


def main() -> int:
    args = sys.argv[1:]
    drawn = Draw.load(Path(args.pop(0).removeprefix("--draw="))) if args[0].startswith("--draw=") else None
    duration, epoch, seed, *ports = args
    schedules = (
        drawn.schedules(float(epoch))
        if drawn is not None
        else {p.name: schedule(p.name, float(duration), float(epoch)) for p in PROVIDERS}
    )
    backends = [
        SimBackend(
            SimProvider(p.name, "openai", schedule=schedules[p.name], models=(p.model,), seed=int(seed) + i),
            int(port),
        )
        for i, (p, port) in enumerate(zip(PROVIDERS, ports, strict=True))
    ]
    code: int = run(serve(backends))
    return code


if __name__ == "__main__":
    sys.exit(main())
