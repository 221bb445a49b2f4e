"""Control-plane fan-out bench: time from publish() of a route change to N sidecars ACKed, and memory per sidecar.

    python bench/fanout/run.py --sidecars 100 1000 [--changes 50] [--procs 4] [--write docs/control-plane.md]

For each N: one ControlPlane in its own process (bench/fanout/server.py), N simulated sidecars spread
over --procs processes (bench/fanout/sidecars.py, one gRPC channel and stream each, ACKing at once),
all on this machine. Each change is timed two ways: from publish() to the last sidecar sending its
ACK (wall clock, read by both processes), and the control plane's own convergence metric.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- fanout:begin -->", "<!-- fanout:end -->"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    sidecars: int
    changes: int
    complete: int  # changes every sidecar ACKed
    external: list[float]  # publish -> last ACK sent, seconds
    internal: list[float]  # llmroute_config_convergence_seconds observations
    rss_per_sidecar: float  # bytes
    rss_total: int


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def lines(stream: asyncio.StreamReader) -> Any:
    line = await stream.readline()
    if not line:
        raise RuntimeError("process ended early")
    return json.loads(line)


async def bench(sidecars: int, changes: int, procs: int, debounce: float) -> Result:
    python = sys.executable
    server = await asyncio.create_subprocess_exec(
        python,
        str(HERE / "server.py"),
        "--sidecars",
        str(sidecars),
        "--changes",
        str(changes),
        "--debounce",
        str(debounce),
        stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None
    port = (await lines(server.stdout))["port"]
    baseline = (await lines(server.stdout))["baseline_rss"]
    log(f"[N={sidecars}] control plane on port {port}, RSS {mib(baseline)}; starting {procs} sidecar processes")
    counts = [sidecars // procs + (1 if i < sidecars % procs else 0) for i in range(procs)]
    clients = [
        await asyncio.create_subprocess_exec(
            python,
            str(HERE / "sidecars.py"),
            "--address",
            f"127.0.0.1:{port}",
            "--count",
            str(n),
            "--prefix",
            f"p{i}",
            stdout=asyncio.subprocess.PIPE,
        )
        for i, n in enumerate(counts)
        if n
    ]
    for client in clients:
        assert client.stdout is not None
        await lines(client.stdout)
    connected = await lines(server.stdout)
    rss = connected["rss"]
    log(
        f"[N={sidecars}] all connected and ACKed; RSS {mib(rss)} ({(rss - baseline) / sidecars / 1024:.1f} KiB/sidecar)"
    )
    published: dict[str, float] = {}
    internal: list[float] = []
    while True:
        event = await lines(server.stdout)
        if event.get("done"):
            break
        published[event["version"]] = event["published_at"]
        if event["convergence_s"] is not None:
            internal.append(event["convergence_s"])
        log(f"[N={sidecars}] change {event['change'] + 1}/{changes}: converged in {event['convergence_s']}")
    acks: dict[str, list[float]] = {}
    for client in clients:
        assert client.stdout is not None
        for v, (count, latest) in (await lines(client.stdout))["acks"].items():
            entry = acks.setdefault(v, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], latest)
        await client.wait()
    await server.wait()
    complete = [v for v in published if acks.get(v, [0])[0] == sidecars]
    external = [acks[v][1] - published[v] for v in complete]
    return Result(sidecars, changes, len(complete), external, internal, (rss - baseline) / sidecars, rss)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, protobuf {version('protobuf')}"
    )


def table(results: list[Result]) -> str:
    rows = [
        "| sidecars | changes all-ACKed | publish → all ACKed p50 | p99 | max | convergence metric p50 | p99 "
        "| operator RSS | RSS per sidecar |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.sidecars:,} | {r.complete}/{r.changes} | {ms(statistics.median(r.external))} "
            f"| {ms(percentile(r.external, 0.99))} | {ms(max(r.external))} | {ms(statistics.median(r.internal))} "
            f"| {ms(percentile(r.internal, 0.99))} | {mib(r.rss_total)} | {r.rss_per_sidecar / 1024:.0f} KiB |"
        )
    return "\n".join(rows)


def write(doc: Path, text: str) -> None:
    content = doc.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    doc.write_text(content[:start] + "\n" + text + "\n" + content[end:])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sidecars", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--changes", type=int, default=50, help="route changes timed per N")
    parser.add_argument("--procs", type=int, default=4, help="processes the simulated sidecars are spread over")
    parser.add_argument("--debounce", type=float, default=0.1, help="the control plane's push debounce, seconds")
    parser.add_argument("--write", type=Path, help=f"replace the text between {BEGIN} and {END} in this file")
    args = parser.parse_args()
    results = [await bench(n, args.changes, args.procs, args.debounce) for n in args.sidecars]
    command = "python bench/fanout/run.py " + " ".join(sys.argv[1:])
    report = f"{table(results)}\n\nMachine: {machine()}.\nCommand: `{command}`."
    print(report)
    if args.write:
        write(args.write, report)
        log(f"results written to {args.write}")


if __name__ == "__main__":
    asyncio.run(main())
