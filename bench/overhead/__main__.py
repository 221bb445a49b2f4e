"""`python -m bench.overhead`: measure the sidecar against calling nginx directly, arms interleaved, with wrk.

Each round runs, for each workload (chat completions, chat completions from a backend that answers in
50 ms, embeddings, Anthropic Messages, OpenAI Responses) and at 1 and at N connections, the direct arm
(wrk -> nginx) and the sidecar arm (wrk -> llmroute sidecar -> nginx), in alternating order; the report takes medians
across rounds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import machine, nginx, procs, report, wrk

ROOT = Path(__file__).resolve().parents[2]
ROUTES = """\
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench, namespace: bench}}
spec:
  models: [bench]
  backends: [{{name: nginx, provider: openai, url: "http://127.0.0.1:{port}/v1", model: bench-model}}]
---
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench-slow, namespace: bench}}
spec:
  models: [bench-slow]
  backends: [{{name: nginx, provider: openai, url: "http://127.0.0.1:{port}{slow}/v1", model: bench-model}}]
---
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench-embed, namespace: bench}}
spec:
  models: [bench-embed]
  backends:
    - {{name: nginx, provider: openai, url: "http://127.0.0.1:{port}/v1", model: bench-model, apis: [embeddings]}}
---
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench-claude, namespace: bench}}
spec:
  models: [bench-claude]
  backends: [{{name: nginx, provider: anthropic, url: "http://127.0.0.1:{port}/v1", model: bench-model}}]
---
apiVersion: llmroute.io/v1alpha1
kind: LLMRoute
metadata: {{name: bench-responses, namespace: bench}}
spec:
  models: [bench-responses]
  backends:
    - {{name: nginx, provider: openai, url: "http://127.0.0.1:{port}/v1", model: bench-model, apis: [responses]}}
"""


POLICY = """\
apiVersion: llmroute.io/v1alpha1
kind: LLMPolicy
metadata: {name: bench-limits, namespace: bench}
spec:
  tier: bench
  budgets: [{name: monthly, window: 31d, limitUSD: 1000000000, action: Reject}]
  rateLimits: [{name: rpm, requestsPerMinute: 1000000000, tokensPerMinute: 1000000000}]
"""
"""`--policy`: a budget and a rate limit (both quantities) that every request fits, so each request pays for
the whole admission path (three quotas reserved and settled) and none is refused."""


@dataclass(frozen=True)
class Workload:
    """One kind of request: the wrk script's API, the model the sidecar routes, and the paths on each arm."""

    name: str
    api: str
    model: str
    direct_path: str
    sidecar_path: str


WORKLOADS = {
    w.name: w
    for w in (
        Workload("chat", "chat", "bench", "/v1/chat/completions", "/v1/chat/completions"),
        Workload("chat-50ms", "chat", "bench-slow", f"{nginx.SLOW_PREFIX}/v1/chat/completions", "/v1/chat/completions"),
        Workload("embeddings", "embeddings", "bench-embed", "/v1/embeddings", "/v1/embeddings"),
        Workload("messages", "messages", "bench-claude", "/v1/messages", "/v1/messages"),
        Workload("responses", "responses", "bench-responses", "/v1/responses", "/v1/responses"),
    )
}
TARGETS = {  # issue 2, issue 5
    "p50": (1.5, 0.7),
    "p99": (5.0, 2.0),
    "rps": (1000.0, 2500.0),
}


@dataclass(frozen=True)
class Sample:
    """One wrk run of one arm, with what that arm's sidecar process spent meanwhile."""

    workload: str
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
        self.workloads = [WORKLOADS[name] for name in args.workloads.split(",")]
        modules = (nginx.ECHO_MODULE,) if any(w.name == "chat-50ms" for w in self.workloads) else ()
        servers = nginx.api_backend(backend_port, slow=bool(modules))
        self.backend = nginx.start("backend", workdir, servers, cpus=args.backend_cpus, modules=modules)
        self.sidecars: dict[str, Sidecar] = {}
        try:
            procs.wait_port(self.backend, backend_port)
            routes = ROUTES.format(port=backend_port, slow=nginx.SLOW_PREFIX)
            self._start_sidecar("sidecar", [str(Path(sys.executable).with_name("llmroute")), "sidecar"], routes)
            served = {"sidecar": self.workloads}
            if args.baseline:
                # An earlier build, for before/after figures in one interleaved run: chat routes only, which
                # every build can parse.
                chat_only = "---".join(routes.split("---")[:2])
                self._start_sidecar(
                    "baseline", [args.baseline, "sidecar", *shlex.split(args.baseline_flags)], chat_only
                )
                served["baseline"] = [w for w in self.workloads if w.api == "chat"]
            if args.policy:  # this build with an LLMPolicy loaded: admission's cost, from the same rounds
                policy_file = workdir / "policy.yaml"
                policy_file.write_text(POLICY)
                command = [str(Path(sys.executable).with_name("llmroute")), "sidecar", "--policies", str(policy_file)]
                self._start_sidecar("policy", command, "---".join(routes.split("---")[:2]))
                served["policy"] = [w for w in self.workloads if w.api == "chat"]
            self.arms = ["direct", *self.sidecars]
            self.urls = {(w.name, "direct"): f"http://127.0.0.1:{backend_port}{w.direct_path}" for w in self.workloads}
            for name, sidecar in self.sidecars.items():
                self.urls |= {(w.name, name): f"http://127.0.0.1:{sidecar.port}{w.sidecar_path}" for w in served[name]}
            self._check()
        except BaseException:
            self.stop()
            raise

    def _start_sidecar(self, name: str, command: list[str], routes: str) -> None:
        port, admin_port = procs.free_port(), procs.free_port()
        route_file = self.workdir / f"{name}-routes.yaml"
        route_file.write_text(routes)
        argv = [
            *command,
            "--routes",
            str(route_file),
            "--listen",
            f"127.0.0.1:{port}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}",
        ]
        process = procs.start(name, procs.pinned(argv, self.args.sidecar_cpus), self.workdir, cwd=ROOT)
        self.sidecars[name] = Sidecar(process, port, admin_port)
        procs.wait_port(process, port)

    def _check(self) -> None:
        """Every arm answers 200 with the same body (native APIs pass it through); the sidecars say they went
        to the nginx backend."""
        bodies: dict[str, dict[str, Any]] = {
            "chat": {"messages": [{"role": "user", "content": "hi"}]},
            "embeddings": {"input": "hi"},
            "messages": {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            "responses": {"input": "hi"},
        }
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        answers = {}
        for (workload, arm), url in self.urls.items():
            w = WORKLOADS[workload]
            body = json.dumps({"model": w.model, **bodies[w.api]}).encode()
            with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=5) as response:
                answer = (response.status, response.read(), response.headers.get("x-llmroute-backend"))
            answers[workload, arm] = answer
        for workload, arm in self.urls:
            if arm != "direct":
                answer, direct = answers[workload, arm], answers[workload, "direct"]
                assert answer[:2] == direct[:2] and answer[2] == "nginx", (workload, answer, direct)

    def run_wrk(self, workload: str, arm: str, connections: int, duration: float) -> wrk.WrkResult:
        w = WORKLOADS[workload]
        env = {"BENCH_API": w.api, "BENCH_MODEL": w.model}
        url = self.urls[workload, arm]
        return wrk.run(url, connections=connections, duration_s=duration, env=env, cpus=self.args.wrk_cpus)

    def measure(self, workload: str, arm: str, connections: int, duration: float, round_: int) -> Sample:
        """Run wrk against one arm, taking the CPU time and overhead histogram of its sidecar around it."""
        sidecar = self.sidecars.get(arm)
        if sidecar is None:
            result = self.run_wrk(workload, arm, connections, duration)
            return Sample(workload, arm, connections, round_, result, None, None, None)
        pid = sidecar.process.pid
        before_overhead, before_cpu = sidecar.overhead_totals(), procs.cpu_seconds([pid])
        result = self.run_wrk(workload, arm, connections, duration)
        cpu = procs.cpu_seconds([pid]) - before_cpu
        total, count = (a - b for a, b in zip(sidecar.overhead_totals(), before_overhead, strict=True))
        sidecar.process.check()
        self.backend.check()
        own = 1000 * total / count if count else None
        return Sample(workload, arm, connections, round_, result, cpu, procs.rss_bytes([pid]), own)

    def stop(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.process.stop()
        self.backend.stop()


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_rounds(bench: Bench, args: argparse.Namespace) -> list[Sample]:
    """Warm every arm up, then the rounds: each workload and concurrency, both arms, first arm alternating
    per round."""
    for workload, arm in bench.urls:
        progress(f"warm-up: {workload} {arm}, {args.connections} connections, {args.warmup:g} s")
        bench.run_wrk(workload, arm, args.connections, args.warmup)
    samples = []
    for round_ in range(1, args.rounds + 1):
        arms = bench.arms if round_ % 2 else list(reversed(bench.arms))
        for workload, connections, arm in (
            (w.name, c, a)
            for w in bench.workloads
            for c in (1, args.connections)
            for a in arms
            if (w.name, a) in bench.urls
        ):
            sample = bench.measure(workload, arm, connections, args.duration, round_)
            r = sample.result
            progress(
                f"round {round_}/{args.rounds}  {workload:<10} c={connections:<3} {arm:<7}  {r.rps:9,.0f} req/s"
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


def _pick(samples: list[Sample], arm: str, connections: int, workload: str = "chat") -> list[Sample]:
    chosen = (s for s in samples if s.workload == workload and s.arm == arm and s.connections == connections)
    return sorted(chosen, key=lambda s: s.round)


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


def api_table(samples: list[Sample], connections: int, workloads: list[str], arm: str = "sidecar") -> str:
    """Per workload: added latency at 1 connection (median of per-round differences), requests/s and CPU
    per request at N connections."""
    med = report.median
    rows = []
    for workload in workloads:
        d1, s1 = _pick(samples, "direct", 1, workload), _pick(samples, arm, 1, workload)
        dn, sn = _pick(samples, "direct", connections, workload), _pick(samples, arm, connections, workload)
        pairs = list(zip(d1, s1, strict=True))
        rows.append(
            [
                workload,
                f"{med([d.result.p50_ms for d in d1]):.3f} ms",
                f"{med([s.result.p50_ms for s in s1]):.3f} ms",
                f"{med([s.result.p50_ms - d.result.p50_ms for d, s in pairs]):+.3f} ms",
                f"{med([s.result.p99_ms - d.result.p99_ms for d, s in pairs]):+.3f} ms",
                f"{med([s.self_reported_ms for s in s1 if s.self_reported_ms is not None] or [0.0]):.3f} ms",
                f"{med([d.result.rps for d in dn]):,.0f}",
                f"{med([s.result.rps for s in sn]):,.0f}",
                f"{med([1e6 * (s.sidecar_cpu_s or 0.0) / s.result.requests for s in sn]):.0f} µs",
            ]
        )
    headers = [
        "workload",
        "direct p50, 1 conn",
        f"through {arm}",
        "added p50",
        "added p99",
        "own overhead (mean), 1 conn",
        f"direct req/s, {connections} conns",
        f"through {arm}",
        "sidecar CPU/req",
    ]
    return report.table(headers, rows)


def _baseline_workloads(args: argparse.Namespace) -> list[str]:
    return [name for name in args.workloads.split(",") if WORKLOADS[name].api == "chat"]


def _extra_arms(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The arms beside direct and sidecar this run had (on the chat workloads), and what each is."""
    arms = []
    if args.baseline:
        flags = f" --baseline-flags={shlex.quote(args.baseline_flags)}" if args.baseline_flags else ""
        arms.append(("baseline", f"the baseline build (`--baseline {args.baseline}{flags}`)"))
    if args.policy:
        arms.append(("policy", "this build with an LLMPolicy loaded (`--policy`: limits that admit every request)"))
    return arms


def _baseline_section(args: argparse.Namespace, samples: list[Sample]) -> str:
    """The other arms' figures from the same rounds, when the run had any."""
    sections = []
    for arm, what in _extra_arms(args):
        table = api_table(samples, args.connections, _baseline_workloads(args), arm=arm)
        sections.append(f"""
The same rounds through {what}, interleaved with the others:

{table}
""")
    return "".join(sections)


def rounds_table(samples: list[Sample]) -> str:
    """Every run, in the order it ran."""
    rows = [
        [
            str(s.round),
            s.workload,
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
    headers = [
        "round",
        "workload",
        "connections",
        "arm",
        "req/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "failed",
        "sidecar CPU µs/req",
    ]
    return report.table(headers, rows)


def document(args: argparse.Namespace, command: str, samples: list[Sample], load: tuple[str, str]) -> str:
    """The docs section: figures, machine, command and method."""
    workloads = args.workloads.split(",")
    facts = report.table(["", ""], [[k, v] for k, v in machine.describe()])
    pins = report.pinning([("sidecar", args.sidecar_cpus), ("nginx", args.backend_cpus), ("wrk", args.wrk_cpus)])
    return f"""\
## Sidecar overhead (bench/overhead)

Measured {time.strftime("%Y-%m-%d %H:%M %Z")} with

    {command}

{summary(samples, args.connections) if "chat" in workloads else "(chat not measured in this run)"}

Every workload of the run (chat-50ms: the same chat completion from a backend that answers after
{nginx.SLOW_DELAY_S * 1000:.0f} ms; embeddings and Anthropic Messages: served natively, bodies passed through):

{api_table(samples, args.connections, workloads)}
{_baseline_section(args, samples)}
Added latency = median over rounds of (sidecar - direct) in the same round; every other figure is the
median over the {args.rounds} rounds. CPU per request = the sidecar process's utime + stime
(/proc/PID/stat) over the run divided by the requests wrk completed.

### Method

- Backend: nginx, 1 worker, answering `POST /v1/chat/completions` from memory with a fixed
  `chat.completion` JSON ({len(nginx.literal_body())} bytes), keep-alive on, no access log; likewise
  `/v1/embeddings` and `/v1/messages` with fixed answers, and `{nginx.SLOW_PREFIX}/v1/chat/completions` with the
  chat answer after `echo_sleep {nginx.SLOW_DELAY_S}` (Debian's libnginx-mod-http-echo).
- Direct arm: wrk → nginx. Sidecar arm: wrk → `llmroute sidecar` (one process, as deployed, uvloop when
  installed) → nginx, one route with one `openai` backend, no API key, default settings otherwise.
- Load: wrk with `chat.lua` (a 90-byte chat request, or the embeddings or Messages request of the
  workload; latencies recorded in µs by wrk), `-t1 -c1` for
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
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {', '.join(WORKLOADS)} (default: all)",
    )
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
    parser.add_argument(
        "--baseline",
        help="the llmroute executable of another build (e.g. an earlier commit's virtualenv): a third arm on the"
        " chat workloads, for before/after figures from one interleaved run",
    )
    parser.add_argument(
        "--baseline-flags",
        default="",
        metavar="FLAGS",
        help="more flags for the baseline's sidecar: with --baseline naming this build, e.g. '--access-log off',"
        " one run compares this build with and without a feature",
    )
    parser.add_argument(
        "--policy",
        action="store_true",
        help="a further arm on the chat workloads: this build with an LLMPolicy loaded (admission's added latency)",
    )
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.overhead", *(sys.argv[1:] if argv is None else argv)])
    load_start = machine.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            samples = run_rounds(bench, args)
        finally:
            bench.stop()
    print(api_table(samples, args.connections, args.workloads.split(",")))
    for arm, _ in _extra_arms(args):
        print(api_table(samples, args.connections, _baseline_workloads(args), arm=arm))
    if not args.no_docs:
        report.replace_section(
            args.docs, "overhead", document(args, command, samples, (load_start, machine.load_average()))
        )
        progress(f"written to {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
