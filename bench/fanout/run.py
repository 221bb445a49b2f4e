"""Control-plane fan-out bench: time from publish() of a route change to N sidecars ACKed, memory per sidecar,
and with several replicas the time for a killed replica's sidecars to be back and current elsewhere.

    python bench/fanout/run.py --sidecars 1000 5000 [--replicas 2] [--kill] [--changes 50] [--procs 4]
                               [--write docs/control-plane.md] [--plot docs/img/fanout.png]

For each N: --replicas ControlPlane processes (bench/fanout/server.py), each published the same
changes at the same moment as the operator's replicas would be, and N simulated sidecars spread
over --procs processes (bench/fanout/sidecars.py: one gRPC channel and stream each, ACKing at once,
choosing and changing replicas as the real client does), all on this machine. Each change is timed
from the first replica's publish() to the last sidecar sending its ACK (wall clock), and by each
replica's own convergence metric (the slower replica's per change). With --kill, replica 1 is then
SIGKILLed and the time until the other replicas count all N sidecars as connected and running the
current table is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- fanout:begin -->", "<!-- fanout:end -->"
CONNECT_TIMEOUT_S = 300.0
RECONNECT_TIMEOUT_S = 120.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Result:
    sidecars: int
    replicas: int
    changes: int
    complete: int  # changes every sidecar ACKed
    external: list[float]  # first publish -> last ACK sent, seconds
    internal: list[float]  # slowest replica's llmroute_config_convergence_seconds observation, per change
    rss_per_sidecar: list[float]  # bytes, per replica
    rss_total: list[int]
    connected: list[int]  # sidecars per replica
    reconnect: float | None = None  # kill -> the survivors count every sidecar programmed, seconds
    killed_at: float = 0.0  # wall time of the SIGKILL
    moved: int = 0
    move_times: list[float] = field(default_factory=list)  # per moved sidecar: kill -> resubscribed
    lost_times: list[float] = field(default_factory=list)  # per moved sidecar: kill -> its stream failed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


class Child:
    """A JSON-lines child process (a replica or a sidecar process)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def read(self) -> Any:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("process ended early")
        return json.loads(line)

    def send(self, **command: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())


async def statuses(replicas: list[Child]) -> list[dict[str, Any]]:
    for replica in replicas:
        replica.send(status=True)
    return [await r.read() for r in replicas]


async def bench(sidecars: int, replicas: int, changes: int, procs: int, debounce: float, kill: bool) -> Result:
    servers = [await Child.start(str(HERE / "server.py"), "--debounce", str(debounce)) for _ in range(replicas)]
    ports = [(await s.read())["port"] for s in servers]
    baselines = [(await s.read())["baseline_rss"] for s in servers]
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    log(f"[N={sidecars}] {replicas} replica(s) on {addresses}; starting {procs} sidecar processes")
    counts = [sidecars // procs + (1 if i < sidecars % procs else 0) for i in range(procs)]
    clients = [
        await Child.start(str(HERE / "sidecars.py"), "--addresses", addresses, "--count", str(n), "--prefix", f"p{i}")
        for i, n in enumerate(counts)
        if n
    ]
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        for client in clients:
            await client.read()
        while sum(s["programmed"] for s in await statuses(servers)) < sidecars:  # noqa: ASYNC110 (other processes)
            await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    connected = await statuses(servers)
    per_replica = [s["connected"] for s in connected]
    rss = [s["rss"] for s in connected]
    rss_per = [(r - b) / max(n, 1) for r, b, n in zip(rss, baselines, per_replica, strict=True)]
    log(f"[N={sidecars}] all connected and ACKed: {per_replica} per replica, {[kib(x) for x in rss_per]} per sidecar")
    published: dict[str, float] = {}  # version -> first replica's publish() wall time
    internal: list[float] = []
    for change in range(changes):
        generation = change + 2
        for server in servers:
            server.send(publish=generation)
        events = [await s.read() for s in servers]
        published[events[0]["version"]] = min(e["at"] for e in events)
        observed = [(await s.read())["convergence_s"] for s in servers]
        if all(o is not None for o in observed):
            internal.append(max(observed))
        log(f"[N={sidecars}] change {change + 1}/{changes}: replicas converged in {observed}")
        await asyncio.sleep(0.3)
    result = Result(sidecars, replicas, changes, 0, [], internal, rss_per, rss, per_replica)
    if kill and replicas > 1:
        await killed(servers, sidecars, result)
    # The sidecars first: a stopping replica would otherwise move its sidecars once more.
    acks: dict[str, list[float]] = {}
    moves: list[tuple[float, float]] = []
    for client in clients:
        client.send(stop=True)
        report = await client.read()
        for v, (count, latest) in report["acks"].items():
            entry = acks.setdefault(v, [0, 0.0])
            entry[0] += count
            entry[1] = max(entry[1], latest)
        moves.extend(report["moves"])
        await client.proc.wait()
    for server in servers:
        if server.proc.returncode is None:
            server.send(stop=True)
            await server.proc.wait()
    for v, at in published.items():
        count, latest = acks.get(v, [0, 0.0])
        if count >= sidecars:
            result.external.append(latest - at)
            result.complete += 1
    if result.reconnect is not None:
        moved = [(down, up) for down, up in moves if down >= result.killed_at]
        result.move_times = [up - result.killed_at for _, up in moved]
        result.lost_times = [down - result.killed_at for down, _ in moved]
        result.moved = len(moved)
    return result


async def killed(servers: list[Child], sidecars: int, result: Result) -> None:
    """SIGKILL replica 1; time until the others count all sidecars programmed (reconnected and current)."""
    victim, survivors = servers[1], [s for i, s in enumerate(servers) if i != 1]
    await asyncio.sleep(1.0)
    kill_at = time.time()
    victim.proc.send_signal(signal.SIGKILL)
    await victim.proc.wait()
    result.killed_at = kill_at
    async with asyncio.timeout(RECONNECT_TIMEOUT_S):
        while True:
            states = await statuses(survivors)
            if sum(s["programmed"] for s in states) >= sidecars:
                result.reconnect = max(s["at"] for s in states) - kill_at
                break
            await asyncio.sleep(0.2)  # each poll scans every stream: not more often
    log(f"[N={sidecars}] replica 1 killed: all {sidecars} sidecars programmed elsewhere after {result.reconnect:.2f} s")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def mib(size: float) -> str:
    return f"{size / 2**20:.0f} MiB"


def kib(size: float) -> str:
    return f"{size / 1024:.1f} KiB"


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}, "
        f"grpcio {version('grpcio')}, protobuf {version('protobuf')}; load average at the end {load}"
    )


def table(results: list[Result]) -> str:
    rows = [
        "| replicas | sidecars | per replica | changes all-ACKed | publish → all ACKed p50 | p99 | max "
        "| convergence metric p50 | p99 | RSS per sidecar, per replica | killed replica: all back and current |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        reconnect = "n/a"
        if r.reconnect is not None:
            lost = statistics.median(r.lost_times) if r.lost_times else 0.0
            reconnect = f"{r.reconnect:.2f} s ({r.moved:,} moved; streams failed after {lost:.2f} s, median)"
        rows.append(
            f"| {r.replicas} | {r.sidecars:,} | {' / '.join(f'{n:,}' for n in r.connected)} "
            f"| {r.complete}/{r.changes} | {ms(statistics.median(r.external))} "
            f"| {ms(percentile(r.external, 0.99))} | {ms(max(r.external))} | {ms(statistics.median(r.internal))} "
            f"| {ms(percentile(r.internal, 0.99))} | {' / '.join(kib(x) for x in r.rss_per_sidecar)} | {reconnect} |"
        )
    return "\n".join(rows)


def plot(results: list[Result], path: Path) -> None:
    """Change -> all ACKed per run (left) and the killed replica's sidecars back over time (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        label = f"{r.sidecars:,} sidecars, {r.replicas} replica(s)"
        left.plot(range(1, len(r.external) + 1), [x * 1000 for x in r.external], marker="o", ms=3, label=label)
        if r.move_times:
            times = sorted(r.move_times)
            right.plot(times, range(1, len(times) + 1), label=label)
    left.axhline(1500, color="grey", linestyle="--", linewidth=1, label="target p99 1.5 s")
    left.set(xlabel="change", ylabel="publish → all ACKed (ms)", title="Route change fan-out")
    right.axvline(10, color="grey", linestyle="--", linewidth=1, label="target 10 s")
    right.set(xlabel="seconds after SIGKILL", ylabel="sidecars resubscribed", title="Killed replica's sidecars")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(doc: Path, text: str) -> None:
    content = doc.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    doc.write_text(content[:start] + "\n" + text + "\n" + content[end:])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sidecars", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--replicas", type=int, default=1, help="control-plane replicas the sidecars spread over")
    parser.add_argument("--kill", action="store_true", help="then SIGKILL replica 1 and time the move")
    parser.add_argument("--changes", type=int, default=50, help="route changes timed per N")
    parser.add_argument("--procs", type=int, default=4, help="processes the simulated sidecars are spread over")
    parser.add_argument("--debounce", type=float, default=0.1, help="the control plane's push debounce, seconds")
    parser.add_argument("--write", type=Path, help=f"replace the text between {BEGIN} and {END} in this file")
    parser.add_argument("--plot", type=Path, help="write a PNG of the runs here")
    args = parser.parse_args()
    results = [await bench(n, args.replicas, args.changes, args.procs, args.debounce, args.kill) for n in args.sidecars]
    command = "python bench/fanout/run.py " + " ".join(sys.argv[1:])
    report = f"{table(results)}\n\nMachine: {machine()}.\nCommand: `{command}`."
    print(report)
    if args.plot:
        plot(results, args.plot)
    if args.write:
        write(args.write, report)
        log(f"results written to {args.write}")


if __name__ == "__main__":
    asyncio.run(main())
