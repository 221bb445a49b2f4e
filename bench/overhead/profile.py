"""`python -m bench.overhead.profile`: where the sidecar's time per request goes under load, by py-spy.

Starts the same backend and sidecar as the overhead bench, drives the sidecar with wrk, samples it with
`py-spy record --format raw` meanwhile, and prints the CPU share and µs per request of each part of the
request path (innermost frame's library or module) and the hottest functions.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.common import procs, report, wrk
from bench.overhead.__main__ import Bench, progress

# Innermost-frame file patterns to the part of the request path they belong to; first match wins.
PARTS = (
    ("httpcore/_async/connection_pool", "httpcore connection pool"),
    ("httpcore/", "httpcore connection (HTTP/1.1, h11 glue)"),
    ("h11/", "h11 (upstream HTTP/1.1 parsing)"),
    ("anyio/", "anyio (httpcore's socket layer)"),
    ("httpx/", "httpx client (request/response models)"),
    ("prometheus_client/", "prometheus_client metrics"),
    ("http/cookiejar", "httpx client (request/response models)"),
    ("urllib/", "httpx client (request/response models)"),
    ("logging/", "logging"),
    ("json/", "json encode/decode"),
    ("core/http/", "llmroute HTTP server (httptools)"),
    ("sidecar/balancer/", "balancer (estimators, pickers, ejection)"),
    ("sidecar/upstream/transport", "upstream transport (keep-alive pool, httptools)"),
    ("sidecar/upstream/", "sidecar upstream adapter"),
    ("sidecar/", "sidecar request path (app, dispatch)"),
    ("asyncio/", "asyncio (tasks, futures, timeouts, locks)"),
    ("uvloop/", "uvloop event loop"),
    ("", "other"),
)


def part(frame: str) -> str:
    """The part of the request path a `function (file:line)` frame belongs to."""
    where = frame.rpartition("(")[2]
    return next(name for pattern, name in PARTS if pattern in where)


def summarize(raw: Path, requests: int, cpu_s: float, top: int) -> str:
    """Tables of CPU by part (self time) and by function (inclusive), scaled to µs of CPU per request."""
    by_part: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        n = int(count)
        total += n
        by_part[part(frames[-1])] += n
        for frame in set(frames):
            inclusive[frame] += n
    per_request_us = 1e6 * cpu_s / requests

    def row(name: str, n: int) -> list[str]:
        return [name, f"{n / total:.1%}", f"{per_request_us * n / total:.0f}"]

    parts = report.table(
        ["part (innermost frame)", "CPU share", "µs/request"], [row(name, n) for name, n in by_part.most_common()]
    )
    functions = report.table(
        ["function (inclusive)", "CPU share", "µs/request"],
        [row(f"`{name}`", n) for name, n in inclusive.most_common(top)],
    )
    return f"{parts}\n\n{functions}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.profile", description=__doc__)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=40, help="functions listed")
    parser.add_argument("--raw", type=Path, help="keep py-spy's raw (collapsed stacks) output here")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit(f"py-spy missing: {sys.executable} -m pip install py-spy")
    setup = argparse.Namespace(sidecar_cpus=None, backend_cpus=None, wrk_cpus=None, workloads="chat")
    arm = "sidecar"
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        raw = args.raw or Path(tmp) / "profile.txt"
        bench = Bench(setup, Path(tmp))
        try:
            progress("warm-up")
            wrk.run(bench.urls["chat", arm], connections=args.connections, duration_s=3)
            progress(f"profiling {args.duration:g} s at {args.connections} connections")
            recorder = subprocess.Popen(
                [
                    spy,
                    "record",
                    "--pid",
                    str(bench.sidecars[arm].process.pid),
                    "--format",
                    "raw",
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(int(args.duration) + 2),
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)
            cpu = procs.cpu_seconds([bench.sidecars[arm].process.pid])
            result = wrk.run(bench.urls["chat", arm], connections=args.connections, duration_s=args.duration)
            cpu = procs.cpu_seconds([bench.sidecars[arm].process.pid]) - cpu
            _, errors = recorder.communicate()
            if recorder.returncode:
                raise SystemExit(f"py-spy failed: {errors}")
        finally:
            bench.stop()
        progress(f"{result.rps:,.0f} req/s under py-spy, sidecar CPU {1e6 * cpu / result.requests:.0f} µs/request")
        print(summarize(raw, result.requests, cpu, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
