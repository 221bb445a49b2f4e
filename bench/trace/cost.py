"""`python -m bench.trace.cost`: what tracing costs the sidecar, off against on, arms alternated.

For each arm: the time from starting `llmroute sidecar` to its /readyz answering, its RSS once ready and
after the requests, and its CPU time per chat request (sequential requests on one keep-alive connection to
nginx's zero-delay OpenAI backend; with tracing on, the CPU of the span exporter's thread is included).
Tracing on exports to an OTLP collector in this process. The exact figure per request is the instruction
count (`python -m bench.overhead.instructions --otlp`); these timings vary with the machine's load.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import nginx, procs
from bench.common import sidecar as sidecar_proc
from bench.overhead.__main__ import ROUTES
from llmroute.sim.otlp import collector_thread

OTEL = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY")


@dataclass
class Run:
    """One sidecar's start-up time, RSS and CPU per request."""

    arm: str
    startup_s: float
    rss_ready_mib: float
    rss_after_mib: float
    cpu_us_per_request: float


def one(arm: str, routes: Path, workdir: Path, requests: int) -> Run:
    started = time.monotonic()
    sidecar = sidecar_proc.start(f"sidecar-{arm}", routes, workdir)
    startup = time.monotonic() - started
    try:
        pid = sidecar.process.pid
        ready = procs.rss_bytes([pid])
        body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello."}]})
        connection = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
        for _ in range(100):  # warm-up
            _post(connection, body)
        cpu = procs.cpu_seconds([pid])
        for _ in range(requests):
            _post(connection, body)
        time.sleep(0.3)  # the exporter's last batch (every 100 ms) is counted too
        used = procs.cpu_seconds([pid]) - cpu
        after = procs.rss_bytes([pid])
    finally:
        sidecar.process.stop()
    return Run(arm, startup, ready / 2**20, after / 2**20, used / requests * 1e6)


def _post(connection: http.client.HTTPConnection, body: str) -> None:
    connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    answer = connection.getresponse()
    answer.read()
    assert answer.status == 200, answer.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace.cost", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    procs.require("nginx")
    runs: list[Run] = []
    with collector_thread() as collector, tempfile.TemporaryDirectory(prefix="bench-trace-cost-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        backend = nginx.start("backend", workdir, nginx.api_backend(port, slow=True), modules=(nginx.ECHO_MODULE,))
        try:
            procs.wait_port(backend, port)
            routes = workdir / "routes.yaml"
            routes.write_text("---".join(ROUTES.format(port=port, slow=nginx.SLOW_PREFIX).split("---")[:2]))
            for round_ in range(args.rounds):
                for arm in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                    for name in OTEL:
                        os.environ.pop(name, None)
                    if arm == "on":
                        os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
                    runs.append(one(arm, routes, workdir, args.requests))
                    print(runs[-1], flush=True)
        finally:
            backend.stop()
        spans = len(collector.spans)
    print(f"\nmedians over {args.rounds} rounds of {args.requests:,} requests (the collector received {spans:,} spans)")
    print("| tracing | start-up to ready (s) | RSS ready (MiB) | RSS after (MiB) | CPU per request (µs) |")
    print("| --- | --- | --- | --- | --- |")
    for arm in ("off", "on"):
        mine = [r for r in runs if r.arm == arm]

        def med(field: str, rs: list[Run] = mine) -> float:
            return float(statistics.median(getattr(r, field) for r in rs))

        print(
            f"| {arm} | {med('startup_s'):.2f} | {med('rss_ready_mib'):.1f} | {med('rss_after_mib'):.1f} |"
            f" {med('cpu_us_per_request'):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
