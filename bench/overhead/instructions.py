"""`python -m bench.overhead.instructions [LLMROUTE ...]`: CPU instructions per request in the sidecar, counted
by valgrind's callgrind: chat (JSON from a 0 ms and a 50 ms backend, and streamed), embeddings and Anthropic
Messages, each against the nginx backends of bench/overhead.

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
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import nginx, procs
from bench.overhead.__main__ import POLICY, ROUTES
from llmroute.sim.otlp import collector_thread

WARMUP = 200
MEASURED = 1000
"""Enough requests that the garbage collector's occasional full passes average out. With 200 and a random hash
seed, counts of one build varied by 2% from run to run; with these and a fixed seed, by about 1.5%: the
sidecar's periodic loops (ejection probes, the route file check) run meanwhile, as often as valgrind's pace
lets them."""
_PROMPT = "Say hello in one short sentence."
_CHAT = {"model": "bench", "messages": [{"role": "user", "content": _PROMPT}]}
STREAM_ROUTE = """\
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench-stream, namespace: bench}}
spec:
  models: [bench]
  backends: [{{name: nginx, provider: openai, url: "http://127.0.0.1:{port}/v1", model: bench-model}}]
"""


@dataclass(frozen=True)
class Workload:
    """One kind of request: its path and body, and which route of bench/overhead's (by position) serves it."""

    path: str
    body: dict[str, Any]
    route: int
    """Index into bench/overhead's ROUTES; -1: the stream route (STREAM_ROUTE) on the SSE backend."""


WORKLOADS = {
    "chat": Workload("/v1/chat/completions", _CHAT, 0),
    "chat-50ms": Workload("/v1/chat/completions", {**_CHAT, "model": "bench-slow"}, 1),
    "chat-stream": Workload("/v1/chat/completions", {**_CHAT, "stream": True}, -1),
    "embeddings": Workload("/v1/embeddings", {"model": "bench-embed", "input": _PROMPT}, 2),
    "messages": Workload(
        "/v1/messages",
        {"model": "bench-claude", "max_tokens": 64, "messages": [{"role": "user", "content": _PROMPT}]},
        3,
    ),
}


def count(
    llmroute: Path, name: str, routes: Path, workdir: Path, tag: str, flags: list[str], measured: int = MEASURED
) -> float:
    """Instructions per request of `llmroute sidecar` (run under callgrind) serving workload `name` one at a
    time; the callgrind output is `workdir/callgrind-TAG-NAME.out*` (callgrind_annotate shows where they go)."""
    workload = WORKLOADS[name]
    port, admin = procs.free_port(), procs.free_port()
    out = workdir / f"callgrind-{tag}-{name}.out"
    python = llmroute.with_name("python")
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", str(python)]
    argv += [str(llmroute), "sidecar", "--routes", str(routes), "--listen", f"127.0.0.1:{port}"]
    argv += ["--admin-listen", f"127.0.0.1:{admin}", *flags]
    # One hash seed for every run: dict and set layouts, and so the instructions, then repeat exactly.
    sidecar = procs.start(f"sidecar-{name}", argv, workdir, env={**os.environ, "PYTHONHASHSEED": "0"})
    try:
        procs.wait_port(sidecar, port, timeout=300)  # valgrind starts Python slowly
        body = json.dumps(workload.body)
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def one() -> None:
            connection.request("POST", workload.path, body, headers)
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
        for dump in workdir.glob(f"{out.name}*")
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
    parser.add_argument(
        "--workloads",
        default="chat,chat-50ms,chat-stream",
        help=f"comma list of {', '.join(WORKLOADS)} (embeddings and messages need a build that has those APIs)",
    )
    parser.add_argument("--keep", type=Path, help="a directory to keep the callgrind outputs in")
    parser.add_argument(
        "--sidecar-flags", default="", metavar="FLAGS", help="more flags for the sidecars, e.g. '--access-log off'"
    )
    parser.add_argument(
        "--policy", action="store_true", help="count each build also with an LLMPolicy loaded (admission's cost)"
    )
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
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        port, stream_port = procs.free_port(), procs.free_port()
        servers = nginx.api_backend(port, slow=True) + nginx.stream_backend(stream_port)
        backend = nginx.start("backend", workdir, servers, modules=(nginx.ECHO_MODULE,))
        try:
            procs.wait_port(backend, port)
            procs.wait_port(backend, stream_port)
            routes = ROUTES.format(port=port, slow=nginx.SLOW_PREFIX).split("---")
            policy = workdir / "policy.yaml"
            policy.write_text(POLICY)
            variants: list[tuple[str, list[str]]] = [("", [])]
            if args.policy:
                variants.append(("+policy", ["--policies", str(policy)]))
            for index, build in enumerate(args.builds):
                for name in args.workloads.split(","):
                    route = WORKLOADS[name].route
                    # Each sidecar gets only its workload's route, so an older build need parse no other.
                    path = workdir / f"routes-{name}.yaml"
                    path.write_text(STREAM_ROUTE.format(port=stream_port) if route < 0 else routes[route])
                    for suffix, extra in variants:
                        flags = [*shlex.split(args.sidecar_flags), *extra]
                        per_request = count(build, name, path, workdir, f"{index}{suffix}", flags, args.requests)
                        print(f"{build}  {name + suffix:<18} {per_request:,.0f} instructions per request", flush=True)
        finally:
            backend.stop()
        if args.otlp:
            print(f"the collector received {len(collector.spans):,} spans", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
