"""`python -m bench.overhead.idle`: why the sidecar adds more latency in front of a backend that answers in
50 ms than in front of one that answers at once, apart from everything else the sidecar does.

Three conditions, each at 1 connection, direct (wrk -> nginx) and through the sidecar, interleaved over
rounds:

- `back-to-back`: the 0 ms backend, each request sent as the last answer arrives: no process idles.
- `think-50ms`: the 0 ms backend, wrk waiting 50 ms between an answer and its next request: the sidecar
  idles 50 ms before each request, with nothing in flight, no timer of a request armed and no backend
  call to wait for.
- `backend-50ms`: the 50 ms backend, back to back: the sidecar idles 50 ms waiting for each answer.

For the sidecar process it reports, per request, the CPU time the scheduler gave it and the time it spent
runnable but waiting for a CPU (/proc/PID/schedstat), and the kernel's share of its CPU time (/proc/PID/stat,
sampled at clock ticks). Then, without any server, the same piece of Python work (JSON round trips) timed
back to back and after a 50 ms sleep.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import nginx, procs, sidecar, wrk
from bench.overhead.__main__ import ROUTES

# condition: (model, path on nginx, wrk environment)
CONDITIONS = {
    "back-to-back": ("bench", "/v1/chat/completions", {}),
    "think-50ms": ("bench", "/v1/chat/completions", {"BENCH_THINK_MS": "50"}),
    "backend-50ms": ("bench-slow", f"{nginx.SLOW_PREFIX}/v1/chat/completions", {}),
}


@dataclass(frozen=True)
class Counters:
    """A process's scheduler and CPU counters, summed over its threads."""

    exec_ns: int
    """CPU time it ran (schedstat field 1)."""
    delay_ns: int
    """Time it was runnable but waited for a CPU (schedstat field 2)."""
    user_ticks: int
    system_ticks: int
    overhead_sum: float
    overhead_count: float
    """The sidecar's llmroute_overhead_seconds histogram."""


def counters(side: sidecar.Sidecar) -> Counters:
    pid = side.process.pid
    exec_ns = delay_ns = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        ran, waited, _ = (task / "schedstat").read_text().split()
        exec_ns, delay_ns = exec_ns + int(ran), delay_ns + int(waited)
    stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    lines = [line for line in side.admin("/metrics").splitlines() if line.startswith("llmroute_overhead_seconds_")]
    values = dict(line.rsplit(" ", 1) for line in lines)
    return Counters(
        exec_ns,
        delay_ns,
        int(stat[11]),
        int(stat[12]),
        float(values["llmroute_overhead_seconds_sum"]),
        float(values["llmroute_overhead_seconds_count"]),
    )


@dataclass(frozen=True)
class Sample:
    """One round of one condition: both arms' p50 and the sidecar's counters per request."""

    added_ms: float
    cpu_us: float
    waiting_us: float
    system_share: float
    own_ms: float


def measure(name: str, port: int, side: sidecar.Sidecar, duration: float, sidecar_first: bool) -> Sample:
    model, path, env = CONDITIONS[name]
    env = {**env, "BENCH_MODEL": model}
    p50 = {}
    for arm in ("sidecar", "direct") if sidecar_first else ("direct", "sidecar"):
        if arm == "direct":
            p50[arm] = checked(wrk.run(f"http://127.0.0.1:{port}{path}", connections=1, duration_s=duration, env=env))
            continue
        before = counters(side)
        result = wrk.run(f"{side.base_url}/chat/completions", connections=1, duration_s=duration, env=env)
        p50[arm] = checked(result)
        after = counters(side)
        n = result.requests
        ticks = (after.user_ticks - before.user_ticks) + (after.system_ticks - before.system_ticks)
        sample = (
            (after.exec_ns - before.exec_ns) / n / 1000,
            (after.delay_ns - before.delay_ns) / n / 1000,
            (after.system_ticks - before.system_ticks) / ticks if ticks else 0.0,
            1000 * (after.overhead_sum - before.overhead_sum) / (after.overhead_count - before.overhead_count),
        )
    return Sample(p50["sidecar"] - p50["direct"], *sample)


def checked(result: wrk.WrkResult) -> float:
    if result.failed:
        raise RuntimeError(f"{result.failed} requests failed")
    return result.p50_ms


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.idle", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of wrk per arm and condition")
    args = parser.parse_args(argv)
    procs.require("wrk", "nginx")
    samples: dict[str, list[Sample]] = {name: [] for name in CONDITIONS}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        workdir = Path(tmp)
        port = procs.free_port()
        backend = nginx.start("backend", workdir, nginx.api_backend(port, slow=True), modules=(nginx.ECHO_MODULE,))
        side = None
        try:
            procs.wait_port(backend, port)
            routes = workdir / "routes.yaml"
            routes.write_text("---".join(ROUTES.format(port=port, slow=nginx.SLOW_PREFIX).split("---")[:2]))
            side = sidecar.start("sidecar", routes, workdir)
            for model, _, _ in CONDITIONS.values():  # warm-up
                wrk.run(f"{side.base_url}/chat/completions", connections=1, duration_s=2, env={"BENCH_MODEL": model})
            for round_ in range(1, args.rounds + 1):
                for name in CONDITIONS if round_ % 2 else reversed(CONDITIONS):
                    s = measure(name, port, side, args.duration, sidecar_first=not round_ % 2)
                    samples[name].append(s)
                    print(
                        f"round {round_} {name:<13} added p50 {s.added_ms:+.3f} ms  sidecar per request: CPU"
                        f" {s.cpu_us:.0f} µs ({100 * s.system_share:.0f}% kernel), waiting for a CPU"
                        f" {s.waiting_us:.0f} µs, own overhead {s.own_ms:.3f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            if side is not None:
                side.process.stop()
            backend.stop()
    print("| condition | added p50: median [min, max] | sidecar CPU per request | of it in the kernel |", end="")
    print(" waiting for a CPU per request | own overhead (mean) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, rows in samples.items():
        added = [s.added_ms for s in rows]

        def median(field: str, rows: list[Sample] = rows) -> float:
            return float(statistics.median(getattr(s, field) for s in rows))

        print(
            f"| {name} | {statistics.median(added):+.3f} ms [{min(added):+.3f}, {max(added):+.3f}]"
            f" | {median('cpu_us'):.0f} µs | {100 * median('system_share'):.0f}% | {median('waiting_us'):.0f} µs"
            f" | {median('own_ms'):.3f} ms |"
        )
    print()
    print("| the same Python work (20 JSON round trips), median of 100 | |")
    print("| --- | ---: |")
    print(f"| back to back | {time_work(0, 100):.0f} µs |")
    print(f"| each after a 50 ms sleep | {time_work(0.05, 100):.0f} µs |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
