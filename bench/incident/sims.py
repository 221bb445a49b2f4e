"""`python -m bench.incident.sims DURATION EPOCH PORT...`: the scenario's providers in their own process,
on the given ports, following the script from EPOCH (time.time()); serves until SIGTERM."""

from __future__ import annotations

import sys

from bench.incident.scenario import PROVIDERS, schedule
from llmroute.http import run
from llmroute.sim import SimBackend, SimProvider, serve


def main() -> int:
    duration, epoch, seed, *ports = sys.argv[1:]
    backends = [
        SimBackend(
            SimProvider(
                p.name,
                "openai",
                schedule=schedule(p.name, float(duration), float(epoch)),
                models=(p.model,),
                seed=int(seed) + i,
            ),
            int(port),
        )
        for i, (p, port) in enumerate(zip(PROVIDERS, ports, strict=True))
    ]
    code: int = run(serve(backends))
    return code


if __name__ == "__main__":
    sys.exit(main())
