"""`python -m bench.peers`: direct, nginx, LiteLLM's proxy and the llmroute sidecar in one run, one backend,
one load generator (wrk); arms interleaved over rounds, medians reported. `--soak N` instead drives N
requests through the sidecar and tracks its memory."""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bench.common import litellm, machine, nginx, report
from bench.peers import chart, measure, soak, stack, summary

ROOT = Path(__file__).resolve().parents[2]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_rounds(running: stack.Stack, args: argparse.Namespace) -> list[measure.Sample]:
    """Warm every arm up, then per round: each mode, each concurrency, every arm (order flipped each round)."""
    arms = list(running.urls)
    for arm in arms:
        for mode in stack.MODES:
            progress(f"warm-up: {arm} {mode}, {args.connections} connections, {args.warmup:g} s")
            measure.run(running, arm, mode, args.connections, args.warmup, 0, args.wrk_cpus)
    samples = []
    for round_ in range(1, args.rounds + 1):
        order = arms if round_ % 2 else list(reversed(arms))
        for mode in stack.MODES:
            for connections in (1, args.connections):
                for arm in order:
                    s = measure.run(running, arm, mode, connections, args.duration, round_, args.wrk_cpus)
                    r = s.result
                    progress(
                        f"round {round_}/{args.rounds} {mode:<6} c={connections:<3} {arm:<8}"
                        f" {r.rps:9,.0f} req/s  p50 {r.p50_ms:8.3f} ms  p99 {r.p99_ms:8.3f} ms"
                        + (f"  failed {r.failed}" if r.failed else "")
                        + (f"  cpu {s.cpu_us_per_request:,.0f} us/req" if s.cpu_us_per_request is not None else "")
                    )
                    samples.append(s)
    return samples


def _versions() -> str:
    facts = [("llmroute commit", machine.git_commit()), ("LiteLLM", litellm.version()), *machine.describe()]
    return report.table(["", ""], [[k, v] for k, v in facts])


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def document(
    args: argparse.Namespace,
    command: str,
    samples: list[measure.Sample],
    running: stack.Stack,
    load: tuple[str, str],
    image: str,
) -> str:
    figures = [summary.figures(samples, arm, mode, args.connections) for mode in stack.MODES for arm in running.urls]
    n = args.connections
    pins = report.pinning([("proxy", args.proxy_cpus), ("nginx backend", args.backend_cpus), ("wrk", args.wrk_cpus)])
    return f"""\
## Side by side with the peers (bench/peers)

Measured {time.strftime("%Y-%m-%d %H:%M %Z")} with

    {command}

![added latency, throughput, CPU and memory of each proxy]({image})

### Targets

{summary.targets(figures, n)}

### Non-streaming (JSON answer)

{summary.table(figures, "json", n)}

### Streaming (SSE answer)

{summary.table(figures, "stream", n)}

Added = median over rounds of (arm - direct) in the same round at 1 connection; every other figure is
the median over the {args.rounds} rounds. Proxy CPU per request = the proxy's processes' utime + stime
(/proc/PID/stat; nginx: master + worker) over the run divided by the requests wrk completed; RSS = their
resident memory (/proc/PID/statm) after each run, the largest seen. "Share of a core" above 100% means
the proxy used more than one core (nginx, LiteLLM's helper threads).

### Method

- Backend: nginx, 1 worker, two servers answering `POST /v1/chat/completions` from memory: a fixed
  `chat.completion` JSON ({len(nginx.literal_body())} bytes), and the same answer as a fixed SSE stream
  ({len(nginx.stream_body())} bytes: role, two content deltas, finish, usage, `[DONE]`). nginx cannot see
  whether the body asks for a stream, so streaming runs use the second server: model `bench-stream`.
- Arms: direct (wrk → backend); nginx (wrk → nginx 1 worker, `proxy_pass` with upstream `keepalive 64`,
  HTTP/1.1, buffering off for the stream server: the floor any proxy can reach); LiteLLM (wrk →
  `litellm --num_workers 1`, its latency-based routing, telemetry off, no database, no UI,
  LITELLM_LOG=ERROR, uvicorn's access log off);
  llmroute (wrk → `llmroute sidecar --routes` as deployed, one route per mode with one `openai` backend,
  default settings otherwise).
- Load: wrk with `bench/common/chat.lua` (a 90-byte chat request, `"stream":true` added for streaming),
  `-t1 -c1` for latency and `-t2 -c{n}` for throughput; closed loop, keep-alive connections; a
  {args.warmup:g} s warm-up per arm and mode, then {args.rounds} rounds of {args.duration:g} s per arm, mode and
  concurrency, arms back to back in one order in odd rounds and reversed in even rounds.
- Everything on the same {machine.describe()[0][1]}-core machine: wrk, the backend and the proxy compete
  for the cores. CPU pinning (taskset): {pins}. Load average (1 min): {load[0]} at the start, {load[1]} at the end.

The sidecar's routes:

{_indent(running.route_yaml)}

LiteLLM's config:

{_indent(running.litellm_yaml)}

### Versions and machine

{_versions()}

### Every run

{summary.rounds_table(samples)}
"""


def soak_document(command: str, result: soak.Soak, image: str, load: tuple[str, str]) -> str:
    return f"""\
## Sidecar memory over one million requests (bench/peers --soak)

Measured {time.strftime("%Y-%m-%d %H:%M %Z")} (llmroute {machine.git_commit()}) with

    {command}

![sidecar RSS over requests]({image})

{soak.table(result)}

Method: the backend and the sidecar of the peers bench (non-streaming route), wrk at 64 connections in
chunks of equal length until the count is reached; the sidecar's RSS (/proc/PID/statm) read after each
chunk and every 0.2 s for the peak. Growth is measured from the first chunk on, once connection pools and
caches are warm. Load average (1 min): {load[0]} at the start, {load[1]} at the end.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per arm and mode")
    parser.add_argument("--connections", type=int, default=64, help="connections of the throughput runs")
    parser.add_argument(
        "--arms", default=",".join(stack.ARMS[1:]), help="proxies to compare with direct (default: all)"
    )
    parser.add_argument("--proxy-cpus", help="taskset CPU list for the proxy under test (default: not pinned)")
    parser.add_argument("--backend-cpus", help="taskset CPU list for the nginx backend")
    parser.add_argument("--wrk-cpus", help="taskset CPU list for wrk")
    parser.add_argument(
        "--soak", type=int, metavar="N", help="instead: N requests through the sidecar, tracking its RSS"
    )
    parser.add_argument("--soak-chunk", type=float, default=5.0, help="seconds per wrk run in --soak")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    parser.add_argument("--no-docs", action="store_true", help="only print the tables")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.peers", *(sys.argv[1:] if argv is None else argv)])
    arms = ("sidecar",) if args.soak else tuple(a for a in args.arms.split(",") if a)
    unknown = set(arms) - set(stack.ARMS[1:])
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}: choose from {', '.join(stack.ARMS[1:])}")
    cpus = {"proxy": args.proxy_cpus, "backend": args.backend_cpus}
    load_start = machine.load_average()
    img_dir = args.docs.parent / "img"
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        progress(f"starting backend and {', '.join(arms)}")
        running = stack.start(Path(tmp), arms, cpus=cpus)
        try:
            measure.check(running)
            if args.soak:
                result = soak.run(running, args.soak, args.connections, args.soak_chunk, args.wrk_cpus)
            else:
                samples = run_rounds(running, args)
        finally:
            running.stop()
    load = (load_start, machine.load_average())
    if args.soak:
        print(soak.table(result))
        if not args.no_docs:
            soak.draw(result, img_dir / "peers-soak.png")
            report.replace_section(args.docs, "peers-soak", soak_document(command, result, "img/peers-soak.png", load))
            progress(f"written to {args.docs} and {img_dir / 'peers-soak.png'}")
        return 0
    figures = [summary.figures(samples, arm, mode, args.connections) for mode in stack.MODES for arm in running.urls]
    print(summary.targets(figures, args.connections))
    for mode in stack.MODES:
        print(f"\n{mode}:\n" + summary.table(figures, mode, args.connections))
    if not args.no_docs:
        commit = machine.git_commit().split()[0]
        title = f"{machine.describe()[0][1]} cores, llmroute {commit}, LiteLLM {litellm.version()}, nginx backend"
        chart.draw(figures, args.connections, img_dir / "peers.png", title)
        report.replace_section(args.docs, "peers", document(args, command, samples, running, load, "img/peers.png"))
        progress(f"written to {args.docs} and {img_dir / 'peers.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
