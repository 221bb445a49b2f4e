"""`python -m bench.incident.sims DURATION EPOCH PORT...`: the scenario's providers in their own process,
on the given ports, following the script from EPOCH (time.time()); serves until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys

from bench.incident.scenario import PROVIDERS, schedule
from llmroute.http import run
from llmroute.sim import SimProvider


async def serve(duration: float, epoch: float, ports: list[int], seed: int) -> int:
    providers = [
        SimProvider(p.name, "openai", schedule=schedule(p.name, duration, epoch), models=(p.model,), seed=seed + i)
        for i, p in enumerate(PROVIDERS)
    ]
    for provider, port in zip(providers, ports, strict=True):
        await provider.start("127.0.0.1", port)
        print(f"{provider.name}\t{provider.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for provider in providers:
        await provider.stop()
    return 0


def main() -> int:
    duration, epoch, seed, *ports = sys.argv[1:]
    code: int = run(serve(float(duration), float(epoch), [int(p) for p in ports], int(seed)))
    return code


if __name__ == "__main__":
    sys.exit(main())
