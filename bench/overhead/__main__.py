"""`python -m bench.overhead`: measure the sidecar against calling nginx directly, arms interleaved, with wrk.

Each round runs, at 1 and at N connections, the direct arm (wrk -> nginx) and the sidecar arm
(wrk -> llmroute sidecar -> nginx), in alternating order; the report takes medians across rounds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.common import machine, nginx, procs, report, wrk

ROOT = Path(__file__).resolve().parents[2]
ROUTE = """\
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench, namespace: bench}}
spec:
  models: [bench]
  backends:
    - name: nginx
      provider: openai
      url: http://127.0.0.1:{port}/v1
      model: bench-model
"""
TARGETS = {  # issue 2, issue 5
    "p50": (1.5, 0.7),
    "p99": (5.0, 2.0),
    "rps": (1000.0, 2500.0),
}


@dataclass(frozen=True)
class Sample:
    """One wrk run of one arm, with what that arm's sidecar process spent meanwhile."""

    arm: str
    connections: int
    round: int
    result: wrk.WrkResult
    sidecar_cpu_s: float | None
    sidecar_rss: int | None
    self_reported_ms: float | None
    """Mean of the sidecar's own llmroute_overhead_seconds over the run."""


@dataclass(frozen=True)
class Sidecar:
    """A running sidecar process and its ports."""

    process: procs.Process
    port: int
    admin_port: int

    def overhead_totals(self) -> tuple[float, float]:
        """(sum, count) of its llmroute_overhead_seconds histogram."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        lines = (line for line in text.splitlines() if line.startswith("llmroute_overhead_seconds_"))
        values = dict(line.rsplit(" ", 1) for line in lines)
        return float(values["llmroute_overhead_seconds_sum"]), float(values["llmroute_overhead_seconds_count"])


class Bench:
    """The backend and the sidecar(s), started once; `measure()` runs one arm."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        procs.require("wrk", "nginx", "taskset")
        backend_port = procs.free_port()
        self.backend = nginx.start("backend", workdir, nginx.chat_backend(backend_port), cpus=args.backend_cpus)
        self.sidecars: dict[str, Sidecar] = {}
        try:
            procs.wait_port(self.backend, backend_port)
            self.routes = workdir / "route.yaml"
            self.routes.write_text(ROUTE.format(port=backend_port))
            self._start_sidecar("sidecar", [str(Path(sys.executable).with_name("llmroute")), "sidecar"])
            self.urls = {"direct": f"http://127.0.0.1:{backend_port}/v1/chat/completions"} | {
                name: f"http://127.0.0.1:{s.port}/v1/chat/completions" for name, s in self.sidecars.items()
            }
            self._check()
        except BaseException:
            self.stop()
            raise

    def _start_sidecar(self, name: str, command: list[str]) -> None:
        port, admin_port = procs.free_port(), procs.free_port()
        argv = [
            *command,
            "--routes",
            str(self.routes),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
        ]
        process = procs.start(name, procs.pinned(argv, self.args.sidecar_cpus), self.workdir, cwd=ROOT)
        self.sidecars[name] = Sidecar(process, port, admin_port)
        procs.wait_port(process, port)

    def _check(self) -> None:
        """Every arm answers 200 with the same completion; the sidecars say they went to the nginx backend."""
        body = b'{"model":"bench","messages":[{"role":"user","content":"hi"}]}'
        answers = {}
        for arm, url in self.urls.items():
            request = urllib.request.Request(url, body, {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                answers[arm] = (response.status, response.read(), response.headers.get("x-llmroute-backend"))
        for arm in self.sidecars:
            assert answers[arm][:2] == answers["direct"][:2] and answers[arm][2] == "nginx", answers

    def measure(self, arm: str, connections: int, duration: float, round_: int) -> Sample:
        """Run wrk against one arm, taking the CPU time and overhead histogram of its sidecar around it."""
        sidecar = self.sidecars.get(arm)
        if sidecar is None:
            result = wrk.run(self.urls[arm], connections=connections, duration_s=duration, cpus=self.args.wrk_cpus)
            return Sample(arm, connections, round_, result, None, None, None)
        pid = sidecar.process.pid
        before_overhead, before_cpu = sidecar.overhead_totals(), procs.cpu_seconds([pid])
        result = wrk.run(self.urls[arm], connections=connections, duration_s=duration, cpus=self.args.wrk_cpus)
        cpu = procs.cpu_seconds([pid]) - before_cpu
        total, count = (a - b for a, b in zip(sidecar.overhead_totals(), before_overhead, strict=True))
        sidecar.process.check()
        self.backend.check()
        return Sample(
            arm, connections, round_, result, cpu, procs.rss_bytes([pid]), 1000 * total / count if count else None
        )

    def stop(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.process.stop()
        self.backend.stop()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_rounds(bench: Bench, args: argparse.Namespace) -> list[Sample]:
    """Warm both arms up, then the rounds: each concurrency, both arms, first arm alternating per round."""
    for arm in bench.urls:
        progress(f"warm-up: {arm}, {args.connections} connections, {args.warmup:g} s")
        wrk.run(bench.urls[arm], connections=args.connections, duration_s=args.warmup, cpus=args.wrk_cpus)
    samples = []
    for round_ in range(1, args.rounds + 1):
        arms = list(bench.urls) if round_ % 2 else list(reversed(bench.urls))
        for connections in (1, args.connections):
            for arm in arms:
                sample = bench.measure(arm, connections, args.duration, round_)
                r = sample.result
                progress(
                    f"round {round_}/{args.rounds}  c={connections:<3} {arm:<7}  {r.rps:9,.0f} req/s"
                    f"  p50 {r.p50_ms:7.3f} ms  p99 {r.p99_ms:7.3f} ms"
                    + (f"  failed {r.failed}" if r.failed else "")
                    + (
                        f"  sidecar cpu {1e6 * sample.sidecar_cpu_s / r.requests:.0f} us/req"
                        if sample.sidecar_cpu_s is not None
                        else ""
                    )
                )
                samples.append(sample)
    return samples


def _pick(samples: list[Sample], arm: str, connections: int) -> list[Sample]:
    return sorted((s for s in samples if s.arm == arm and s.connections == connections), key=lambda s: s.round)


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    if met:
        return "met"
    return f"missed by {abs(value - target) / target:.0%}" if higher_is_better else f"missed by {value - target:.2f} ms"


def summary(samples: list[Sample], connections: int, arm: str = "sidecar") -> str:
    """The headline table of `arm` against direct: medians across rounds; added latency is the median of
    per-round differences."""
    d1, s1 = _pick(samples, "direct", 1), _pick(samples, arm, 1)
    dn, sn = _pick(samples, "direct", connections), _pick(samples, arm, connections)
    med = report.median

    def added(field: str) -> float:
        return med([getattr(s.result, field) - getattr(d.result, field) for d, s in zip(d1, s1, strict=True)])

    rows: list[list[str]] = []
    for name, field in (("p50", "p50_ms"), ("p99", "p99_ms")):
        extra = added(field)
        t2, t5 = TARGETS[name]
        rows.append(
            [
                f"{name} latency, 1 connection",
                f"{med([getattr(d.result, field) for d in d1]):.3f} ms",
                f"{med([getattr(s.result, field) for s in s1]):.3f} ms",
                f"+{extra:.3f} ms",
                f"≤ +{t2} ms: {_verdict(extra, t2, False)}",
                f"≤ +{t5} ms: {_verdict(extra, t5, False)}",
            ]
        )
    rps = med([s.result.rps for s in sn])
    t2, t5 = TARGETS["rps"]
    rows.append(
        [
            f"requests/s, {connections} connections",
            f"{med([d.result.rps for d in dn]):,.0f}",
            f"{rps:,.0f}",
            "",
            f"≥ {t2:,.0f}: {_verdict(rps, t2, True)}",
            f"≥ {t5:,.0f}: {_verdict(rps, t5, True)}",
        ]
    )
    for name, field in (("p50", "p50_ms"), ("p99", "p99_ms")):
        d, s = med([getattr(x.result, field) for x in dn]), med([getattr(x.result, field) for x in sn])
        rows.append(
            [f"{name} latency, {connections} connections", f"{d:.3f} ms", f"{s:.3f} ms", f"+{s - d:.3f} ms", "", ""]
        )
    for label, group in (("1 connection", s1), (f"{connections} connections", sn)):
        cpu_us = med([1e6 * (s.sidecar_cpu_s or 0.0) / s.result.requests for s in group])
        util = med([(s.sidecar_cpu_s or 0.0) / s.result.duration_s for s in group])
        rows.append([f"sidecar CPU per request, {label}", "", f"{cpu_us:.0f} µs ({util:.0%} of a core)", "", "", ""])
        own = [s.self_reported_ms for s in group if s.self_reported_ms is not None]
        if own:
            rows.append([f"sidecar's own x-llmroute-overhead-ms (mean), {label}", "", f"{med(own):.3f} ms", "", "", ""])
    rss = max(s.sidecar_rss or 0 for s in samples if s.arm == arm) / 2**20
    rows.append(["sidecar RSS (max over the run)", "", f"{rss:.1f} MB", "", "", ""])
    failed = sum(s.result.failed for s in samples if s.arm in ("direct", arm))
    rows.append(["failed requests (socket errors + non-2xx), all runs", "", str(failed), "", "", ""])
    headers = ["", "direct", f"through {arm}", "added", "target, issue 2", "target, issue 5"]
    return report.table(headers, rows)


def rounds_table(samples: list[Sample]) -> str:
    """Every run, in the order it ran."""
    rows = [
        [
            str(s.round),
            str(s.connections),
            s.arm,
            f"{s.result.rps:,.0f}",
            f"{s.result.p50_ms:.3f}",
            f"{s.result.p99_ms:.3f}",
            f"{s.result.max_ms:.1f}",
            str(s.result.failed),
            f"{1e6 * s.sidecar_cpu_s / s.result.requests:.0f}" if s.sidecar_cpu_s is not None else "",
        ]
        for s in samples
    ]
    headers = ["round", "connections", "arm", "req/s", "p50 ms", "p99 ms", "max ms", "failed", "sidecar CPU µs/req"]
    return report.table(headers, rows)


def document(args: argparse.Namespace, command: str, samples: list[Sample], load: tuple[str, str]) -> str:
    """The docs section: figures, machine, command and method."""
    facts = report.table(["", ""], [[k, v] for k, v in machine.describe()])
    pins = report.pinning([("sidecar", args.sidecar_cpus), ("nginx", args.backend_cpus), ("wrk", args.wrk_cpus)])
    return f"""\
## Sidecar overhead (bench/overhead)

Measured {time.strftime("%Y-%m-%d %H:%M %Z")} with

    {command}

{summary(samples, args.connections)}

Added latency = median over rounds of (sidecar - direct) in the same round; every other figure is the
median over the {args.rounds} rounds. CPU per request = the sidecar process's utime + stime
(/proc/PID/stat) over the run divided by the requests wrk completed.

### Method

- Backend: nginx, 1 worker, answering `POST /v1/chat/completions` from memory with a fixed
  `chat.completion` JSON ({len(nginx.literal_body())} bytes), keep-alive on, no access log.
- Direct arm: wrk → nginx. Sidecar arm: wrk → `llmroute sidecar` (one process, as deployed, uvloop when
  installed) → nginx, one route with one `openai` backend, no API key, default settings otherwise.
- Load: wrk with `chat.lua` (a 90-byte chat request; latencies recorded in µs by wrk), `-t1 -c1` for
  latency and `-t2 -c{args.connections}` for throughput; closed loop, keep-alive connections.
- {args.rounds} rounds of {args.duration:g} s per arm and concurrency after a {args.warmup:g} s warm-up of each
  arm; in each round both concurrencies run, the arms back to back, in forward order (direct first) in
  odd rounds and reversed in even rounds, so slow drifts of the machine hit every arm alike.
- Everything on the same machine and cores: wrk, nginx and the sidecar compete for them, as in the
  targets' setting. CPU pinning (taskset): {pins}. The machine is shared: load average (1 min) was
  {load[0]} at the start and {load[1]} at the end; other processes' CPU use shows up as run-to-run spread.

### Machine

{facts}

### Every run

{rounds_table(samples)}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per arm")
    parser.add_argument("--connections", type=int, default=64, help="connections of the throughput runs")
    parser.add_argument("--sidecar-cpus", help="taskset CPU list for the sidecar (default: not pinned)")
    parser.add_argument("--backend-cpus", help="taskset CPU list for nginx")
    parser.add_argument("--wrk-cpus", help="taskset CPU list for wrk")
    parser.add_argument(
        "--docs",
        type=Path,
        default=ROOT / "docs" / "performance.md",
        help="markdown file whose overhead section is rewritten",
    )
    parser.add_argument("--no-docs", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.overhead", *(sys.argv[1:] if argv is None else argv)])
    load_start = machine.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            samples = run_rounds(bench, args)
        finally:
            bench.stop()
    print(summary(samples, args.connections))
    if not args.no_docs:
        report.replace_section(
            args.docs, "overhead", document(args, command, samples, (load_start, machine.load_average()))
        )
        progress(f"written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
