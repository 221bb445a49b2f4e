"""`python -m bench.overhead.instructions [LLMROUTE ...]`: CPU instructions per chat request in the sidecar,
counted by valgrind's callgrind, for the 0 ms and the 50 ms backend of bench/overhead.

Instruction counts do not depend on what else the machine is doing, so two builds (this one and, say, an
earlier commit's virtualenv) compare exactly where timings on a shared 2-core machine cannot. With `--otlp`
the sidecars trace every request to an OTLP collector in this process (spans exported every 100 ms, so the
exporter's work falls inside the counted requests).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import nginx, procs
from bench.overhead.__main__ import ROUTES
from llmroute.sim.otlp import collector_thread

WARMUP = 50
MEASURED = 200
MODELS = {"chat": "bench", "chat-50ms": "bench-slow"}


def count(llmroute: Path, model: str, routes: Path, workdir: Path, measured: int = MEASURED) -> float:
    """Instructions per request of `llmroute sidecar` (run under callgrind) serving `model` one at a time."""
    port, admin = procs.free_port(), procs.free_port()
    out = workdir / f"callgrind-{model}.out"
    python = llmroute.with_name("python")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", str(python)]
    argv += [str(llmroute), "sidecar", "--routes", str(routes), "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}"]
    sidecar = procs.start(f"sidecar-{model}", argv, workdir)
    try:
        procs.wait_port(sidecar, port, timeout=300)  # valgrind starts Python slowly
        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "Say hello in one short sentence."}]}
        )
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def one() -> None:
            connection.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status

        for _ in range(WARMUP):
            one()
        control = ["callgrind_control", "-i"]
        subprocess.run([*control, "on", str(sidecar.pid)], check=True, capture_output=True)
        for _ in range(measured):
            one()
        subprocess.run([*control, "off", str(sidecar.pid)], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(sidecar.pid)], check=True, capture_output=True)
        time.sleep(1)
    finally:
        sidecar.stop()
    totals = [
        int(line.split()[1])
        for dump in workdir.glob(f"callgrind-{model}.out*")
        for line in dump.read_text().splitlines()
        if line.startswith(("summary:", "totals:"))
    ]
    return max(totals, default=0) / measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.instructions", description=__doc__)
    parser.add_argument(
        "builds",
        nargs="*",
        type=Path,
        default=[Path(sys.executable).with_name("llmroute")],
        help="llmroute executables of the builds to count (default: this virtualenv's)",
    )
    parser.add_argument("--workloads", default="chat,chat-50ms", help="chat, chat-50ms or both")
    parser.add_argument("--otlp", action="store_true", help="tracing on: export spans to a collector here")
    parser.add_argument(
        "--requests",
        type=int,
        default=MEASURED,
        help="requests counted per build and workload (more average out the garbage collector's passes)",
    )
    args = parser.parse_args(argv)
    procs.require("valgrind", "callgrind_control", "nginx")
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        if args.otlp:
            collector = stack.enter_context(collector_thread())
            os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="100")
        workdir = Path(tmp)
        port = procs.free_port()
        backend = nginx.start("backend", workdir, nginx.api_backend(port, slow=True), modules=(nginx.ECHO_MODULE,))
        try:
            procs.wait_port(backend, port)
            routes = workdir / "routes.yaml"  # the two chat routes, which every build can parse
            routes.write_text("---".join(ROUTES.format(port=port, slow=nginx.SLOW_PREFIX).split("---")[:2]))
            for build in args.builds:
                for workload in args.workloads.split(","):
                    per_request = count(build, MODELS[workload], routes, workdir, args.requests)
                    print(f"{build}  {workload:<10} {per_request:,.0f} instructions per request", flush=True)
        finally:
            backend.stop()
        if args.otlp:
            print(f"the collector received {len(collector.spans):,} spans", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
