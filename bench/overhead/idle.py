"""`python -m bench.overhead.idle`: why the sidecar adds more latency in front of a backend that answers in
50 ms than in front of one that answers at once, and whether any Python proxy would.

Three conditions, each at 1 connection:

- `back-to-back`: the 0 ms backend, each request sent as the last answer arrives: no process idles.
- `think-50ms`: the 0 ms backend, wrk waiting 50 ms between an answer and its next request: the proxy
  idles 50 ms before each request, with nothing in flight, no timer of a request armed and no backend
  call to wait for.
- `backend-50ms`: the 50 ms backend, back to back: the proxy idles 50 ms waiting for each answer.

Arms, in every round of every condition, their order rotated from round to round: `direct` (wrk -> nginx,
the reference each other arm's added p50 is taken against), `sidecar` (wrk -> llmroute sidecar -> nginx),
any `--variant` (another sidecar command: a build or flags), `relay` (bench/overhead/relay.py: a minimal
uvloop relay that only frames and copies bytes) and `nginx` (nginx as a plain reverse proxy).

For each proxy it reports, per request, the CPU time the scheduler gave it and the time it spent runnable
but waiting for a CPU (/proc/PID/task/*/schedstat), and the kernel's share of its CPU time (/proc/PID/stat,
sampled at clock ticks). Then, without any server, the same piece of Python work (JSON round trips) timed
back to back and after a 50 ms sleep.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import charts, machine, nginx, procs, sidecar, wrk
from bench.overhead.__main__ import ROUTES

SIDECAR_PATH = "/v1/chat/completions"
# condition: (the sidecar's model, the path on nginx, wrk environment)
CONDITIONS = {
    "back-to-back": ("bench", SIDECAR_PATH, {}),
    "think-50ms": ("bench", SIDECAR_PATH, {"BENCH_THINK_MS": "50"}),
    "backend-50ms": ("bench-slow", f"{nginx.SLOW_PREFIX}{SIDECAR_PATH}", {}),
}


@dataclass(frozen=True)
class Counters:
    """A process tree's scheduler and CPU counters, summed over its processes and threads."""

    exec_ns: int
    """CPU time it ran (schedstat field 1)."""
    delay_ns: int
    """Time it was runnable but waited for a CPU (schedstat field 2)."""
    user_ticks: int
    system_ticks: int


def counters(pids: Sequence[int]) -> Counters:
    exec_ns = delay_ns = user = system = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            ran, waited, _ = (task / "schedstat").read_text().split()
            exec_ns, delay_ns = exec_ns + int(ran), delay_ns + int(waited)
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        user, system = user + int(stat[11]), system + int(stat[12])
    return Counters(exec_ns, delay_ns, user, system)


def own_overhead(side: sidecar.Sidecar) -> tuple[float, float]:
    """(sum, count) of the sidecar's llmroute_overhead_seconds histogram."""
    lines = [line for line in side.admin("/metrics").splitlines() if line.startswith("llmroute_overhead_seconds_")]
    values = dict(line.rsplit(" ", 1) for line in lines)
    return float(values["llmroute_overhead_seconds_sum"]), float(values["llmroute_overhead_seconds_count"])


@dataclass(frozen=True)
class Arm:
    """One way to the backend: where wrk sends the request, and the proxy's processes (none for direct)."""

    name: str
    url: Callable[[str], str]
    """The URL for a condition's path on nginx (a sidecar ignores it: its route picks the backend path)."""
    pids: Callable[[], list[int]]
    side: sidecar.Sidecar | None = None


@dataclass(frozen=True)
class Sample:
    """One arm in one round of one condition: its p50, and the proxy's counters per request."""

    condition: str
    arm: str
    round: int
    p50_ms: float
    requests: int
    cpu_us: float | None = None
    waiting_us: float | None = None
    system_share: float | None = None
    own_ms: float | None = None


def measure(arm: Arm, condition: str, round_: int, duration: float) -> Sample:
    model, path, env = CONDITIONS[condition]
    env = {**env, "BENCH_MODEL": model}
    pids = arm.pids()
    before, own_before = counters(pids), own_overhead(arm.side) if arm.side else (0.0, 0.0)
    result = wrk.run(arm.url(path), connections=1, duration_s=duration, env=env)
    if result.failed:
        raise RuntimeError(f"{arm.name}, {condition}: {result.failed} requests failed")
    n = result.requests
    if not pids:
        return Sample(condition, arm.name, round_, result.p50_ms, n)
    after, own_after = counters(pids), own_overhead(arm.side) if arm.side else (0.0, 0.0)
    ticks = (after.user_ticks - before.user_ticks) + (after.system_ticks - before.system_ticks)
    own_n = own_after[1] - own_before[1]
    return Sample(
        condition,
        arm.name,
        round_,
        result.p50_ms,
        n,
        cpu_us=(after.exec_ns - before.exec_ns) / n / 1000,
        waiting_us=(after.delay_ns - before.delay_ns) / n / 1000,
        system_share=(after.system_ticks - before.system_ticks) / ticks if ticks else 0.0,
        own_ms=1000 * (own_after[0] - own_before[0]) / own_n if arm.side and own_n else None,
    )


def python_work() -> None:
    """A fixed piece of interpreter work of about the size of a request's."""
    doc = {"model": "bench", "messages": [{"role": "user", "content": "Say hello in one short sentence."}] * 3}
    for _ in range(20):
        json.loads(json.dumps(doc))


def time_work(sleep: float, repeat: int) -> float:
    """Median µs of python_work() after sleeping `sleep` seconds each time."""
    times = []
    for _ in range(repeat):
        if sleep:
            time.sleep(sleep)
        start = time.perf_counter()
        python_work()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def added(samples: list[Sample]) -> dict[tuple[str, str], list[float]]:
    """(condition, arm) -> each round's p50 minus the direct arm's p50 in the same round and condition."""
    direct = {(s.condition, s.round): s.p50_ms for s in samples if s.arm == "direct"}
    out: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if s.arm != "direct":
            out.setdefault((s.condition, s.arm), []).append(s.p50_ms - direct[s.condition, s.round])
    return out


def tables(samples: list[Sample]) -> str:
    """The markdown tables: added p50 per arm and condition, the proxies' counters, the direct arm's p50."""
    adds = added(samples)
    arms = list(dict.fromkeys(arm for _, arm in adds))
    lines = ["| arm | " + " | ".join(f"added p50, {c}: median [min, max]" for c in CONDITIONS) + " | 50 ms extra |"]
    lines.append("| --- |" + " ---: |" * (len(CONDITIONS) + 1))
    for arm in arms:
        cells = []
        for c in CONDITIONS:
            values = adds[c, arm]
            cells.append(f"+{statistics.median(values):.3f} ms [{min(values):+.3f}, {max(values):+.3f}]")
        extra = statistics.median(adds["backend-50ms", arm]) - statistics.median(adds["back-to-back", arm])
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {extra:+.3f} ms |")
    lines += ["", "| arm | condition | CPU per request | of it in the kernel | waiting for a CPU per request |"]
    lines[-1] += " own overhead (mean) |"
    lines.append("| --- | --- | ---: | ---: | ---: | ---: |")
    for arm in arms:
        for c in CONDITIONS:
            rows = [s for s in samples if s.arm == arm and s.condition == c]

            def median(field: str, rows: list[Sample] = rows) -> float | None:
                values = [getattr(s, field) for s in rows if getattr(s, field) is not None]
                return float(statistics.median(values)) if values else None

            cpu, kernel, waiting, own = (median(f) for f in ("cpu_us", "system_share", "waiting_us", "own_ms"))
            lines.append(
                f"| {arm} | {c} | {cpu or 0:.0f} µs | {100 * (kernel or 0):.0f}% | {waiting or 0:.0f} µs"
                f" | {'' if own is None else f'{own:.3f} ms'} |"
            )
    lines += ["", "| direct (wrk -> nginx) | " + " | ".join(CONDITIONS) + " |", "| --- |" + " ---: |" * len(CONDITIONS)]
    direct = [
        statistics.median(s.p50_ms for s in samples if s.arm == "direct" and s.condition == c) for c in CONDITIONS
    ]
    lines.append("| p50, median of rounds | " + " | ".join(f"{v:.3f} ms" for v in direct) + " |")
    return "\n".join(lines)


def plot(samples: list[Sample], path: Path, title: str) -> None:
    """Added p50 per arm and condition: each round a dot, the median a bar."""
    plt = charts.pyplot()
    adds = added(samples)
    arms = list(dict.fromkeys(arm for _, arm in adds))
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, arm in enumerate(arms):
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(CONDITIONS))]
        medians = [statistics.median(adds[c, arm]) for c in CONDITIONS]
        ax.bar(xs, medians, width * 0.9, label=arm, alpha=0.75)
        for x, c in zip(xs, CONDITIONS, strict=True):
            ax.plot([x] * len(adds[c, arm]), adds[c, arm], "k.", markersize=3)
    ax.set_xticks(range(len(CONDITIONS)), list(CONDITIONS))
    ax.set_ylabel("added p50 over direct, ms (bar: median; dots: rounds)")
    ax.set_title(title, fontsize=10)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sidecar_arm(label: str, side: sidecar.Sidecar) -> Arm:
    """A running sidecar as an arm (its route, not the URL's path, picks the backend's path)."""
    return Arm(label, lambda _: f"{side.base_url}/chat/completions", lambda: [side.process.pid], side)


def start_relay(label: str, upstream: int, rounds: int, workdir: Path, started: list[procs.Process]) -> Arm:
    """Run bench/overhead/relay.py in front of the backend (with `rounds` of JSON work per request)."""
    port = procs.free_port()
    argv = [sys.executable, "-m", "bench.overhead.relay", "--listen", str(port), "--upstream", str(upstream)]
    relay = procs.start(label, [*argv, "--work", str(rounds)], workdir, cwd=sidecar.ROOT)
    started.append(relay)
    procs.wait_port(relay, port)
    return Arm(label, lambda path: f"http://127.0.0.1:{port}{path}", lambda: [relay.pid])


def variant(value: str) -> tuple[str, list[str]]:
    """`LABEL=LLMROUTE [FLAGS...]` for argparse (LLMROUTE `-`: this virtualenv's build)."""
    label, sep, command = value.partition("=")
    words = shlex.split(command)
    if not sep or not label or not words:
        raise argparse.ArgumentTypeError(f"expected LABEL=LLMROUTE [FLAGS...], got {value!r}")
    return label, words


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.idle", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk per arm and condition")
    parser.add_argument("--arms", default="sidecar,relay,nginx", help="comma list of sidecar, relay, nginx")
    parser.add_argument(
        "--variant",
        type=variant,
        action="append",
        default=[],
        metavar="LABEL=LLMROUTE [FLAGS...]",
        help='one more sidecar arm, e.g. "nolog=- --access-log off" (- is this build); repeatable',
    )
    parser.add_argument(
        "--relay-work",
        type=int,
        default=0,
        metavar="N",
        help="one more arm, relay+work: the relay doing N JSON round trips of each request's body",
    )
    parser.add_argument("--json", type=Path, help="write every sample here")
    parser.add_argument("--plot", type=Path, help="draw the added p50 per arm and condition here (PNG)")
    args = parser.parse_args(argv)
    procs.require("wrk", "nginx")
    wanted = args.arms.split(",")
    samples: list[Sample] = []
    loads = [machine.load_average()]
    started: list[procs.Process] = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        backend = nginx.start("backend", workdir, nginx.api_backend(port, slow=True), modules=(nginx.ECHO_MODULE,))
        started.append(backend)
        try:
            procs.wait_port(backend, port)
            arms = [Arm("direct", lambda path: f"http://127.0.0.1:{port}{path}", list)]
            routes = workdir / "routes.yaml"
            routes.write_text("---".join(ROUTES.format(port=port, slow=nginx.SLOW_PREFIX).split("---")[:2]))
            sidecars = [("sidecar", ["-"])] if "sidecar" in wanted else []
            for label, words in [*sidecars, *args.variant]:
                build = None if words[0] == "-" else Path(words[0])
                side = sidecar.start(label, routes, workdir, llmroute=build, flags=words[1:])
                started.append(side.process)
                arms.append(sidecar_arm(label, side))
            if "relay" in wanted:
                arms.append(start_relay("relay", port, 0, workdir, started))
            if args.relay_work:
                arms.append(start_relay("relay+work", port, args.relay_work, workdir, started))
            if "nginx" in wanted:
                proxy_port = procs.free_port()
                proxy = nginx.start("proxy", workdir, nginx.reverse_proxy(proxy_port, port))
                started.append(proxy)
                procs.wait_port(proxy, proxy_port)
                arms.append(
                    Arm("nginx", lambda path: f"http://127.0.0.1:{proxy_port}{path}", lambda: procs.tree(proxy.pid))
                )
            for arm in arms[1:]:  # warm-up
                for name, (model, path, _) in CONDITIONS.items():
                    if name != "think-50ms":
                        wrk.run(arm.url(path), connections=1, duration_s=2, env={"BENCH_MODEL": model})
            for round_ in range(1, args.rounds + 1):
                shift = (round_ - 1) % len(arms)
                order = arms[shift:] + arms[:shift]
                for name in CONDITIONS if round_ % 2 else reversed(CONDITIONS):
                    for arm in order:
                        s = measure(arm, name, round_, args.duration)
                        samples.append(s)
                        print(
                            f"round {round_} {name:<13} {arm.name:<8} p50 {s.p50_ms:.3f} ms",
                            file=sys.stderr,
                            flush=True,
                        )
                loads.append(machine.load_average())
        finally:
            for process in reversed(started):
                process.stop()
    print(tables(samples))
    print()
    print("| the same Python work (20 JSON round trips), median of 100 | |")
    print("| --- | ---: |")
    print(f"| back to back | {time_work(0, 100):.0f} µs |")
    print(f"| each after a 50 ms sleep | {time_work(0.05, 100):.0f} µs |")
    print(f"\nload average (1 min) at the start and after each round: {', '.join(loads)}")
    if args.json:
        args.json.write_text(json.dumps({"loads": loads, "samples": [asdict(s) for s in samples]}, indent=1))
    if args.plot:
        plot(samples, args.plot, f"{len(arms) - 1} proxies, 1 connection, {args.rounds} rounds of {args.duration:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
