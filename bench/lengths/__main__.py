"""`python -m bench.lengths`: does the latency-aware choice hold when an answer's time grows with its length?

Two OpenAI-compatible simulated backends answer JSON chat requests: `quick` in 0.3 s plus 10 ms per output
token, `slow` in 0.4 s plus 20 ms per token. The app's answers are 300 tokens long: 3.3 s on quick, 6.4 s on
slow. A shadow probe asks for 16 tokens, so it comes back in 0.46 s from quick and 0.72 s from slow.
`--clients` closed-loop clients send JSON requests through an `llmroute sidecar` process (strategy
`latency`) for `--duration` seconds, `--rounds` times per condition, the conditions alternated.

The control condition ("length-blind") gives every answer the time of a 300-token answer whatever its length,
as the simulator does by default. The right choice is quick for every request in both conditions. What answer
lengths cost the choice shows three ways: requests answered by slow, requests sent to slow and then hedged to
quick (they start a second attempt), and the app's latency against the 3.3 s of an answer from quick.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

from bench.common import charts, report
from bench.common import sidecar as sidecar_proc
from llmroute.sim import Behavior, Latency, SimProvider

ROOT = Path(__file__).resolve().parents[2]
ANSWER_TOKENS = 300
BACKENDS = {"quick": (0.3, 0.010), "slow": (0.4, 0.020)}
"""Per backend: the time to start an answer (s) and the time per output token (s)."""


@dataclass
class Result:
    """One condition's run: what the app saw, per request, and what each backend received."""

    condition: str
    sent: list[float]  # seconds into the run
    took: list[float]
    backend: list[str]
    attempts: list[int]
    received: dict[str, int]  # requests each backend received (the app's, hedges and shadow probes)

    def share(self, name: str, since: float = 0.0, until: float = float("inf")) -> float:
        chosen = [b for s, b in zip(self.sent, self.backend, strict=True) if since <= s < until]
        return chosen.count(name) / len(chosen) if chosen else float("nan")

    def quantile(self, q: float) -> float:
        ordered = sorted(self.took)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def behaviors(length_timed: bool) -> dict[str, Behavior]:
    """Each backend's behaviour: answer time grows with length, or is a 300-token answer's whatever the length."""
    out = {}
    for name, (start, per_token) in BACKENDS.items():
        if length_timed:
            out[name] = Behavior(latency=Latency.fixed(start), json_token_delay=per_token, output_tokens=ANSWER_TOKENS)
        else:
            out[name] = Behavior(latency=Latency.fixed(start + ANSWER_TOKENS * per_token), output_tokens=ANSWER_TOKENS)
    return out


def routes(sims: dict[str, SimProvider]) -> str:
    backends = [{"name": n, "provider": "openai", "url": s.url, "model": f"{n}-model"} for n, s in sims.items()]
    spec = {"models": ["chat"], "strategy": "latency", "backends": backends}
    doc = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "lengths"}, "spec": spec}
    return yaml.safe_dump(doc)


async def run(condition: str, length_timed: bool, workdir: Path, clients: int, duration: float) -> Result:
    sims = {name: SimProvider(name, "openai", b, seed=1) for name, b in behaviors(length_timed).items()}
    for sim in sims.values():
        await sim.start()
    (workdir / f"{condition}.yaml").write_text(routes(sims))
    sidecar = await asyncio.to_thread(sidecar_proc.start, condition, workdir / f"{condition}.yaml", workdir)
    result = Result(condition, [], [], [], [], {})
    body = {"model": "chat", "messages": [{"role": "user", "content": "Tell me about the weather."}]}
    try:
        async with httpx.AsyncClient(base_url=sidecar.base_url, timeout=60) as http:
            began = time.monotonic()

            async def client() -> None:
                while (sent := time.monotonic()) < began + duration:
                    response = await http.post("/chat/completions", json=body)
                    if response.status_code != 200:
                        raise SystemExit(f"{condition}: {response.status_code} {response.text}")
                    result.sent.append(sent - began)
                    result.took.append(time.monotonic() - sent)
                    result.backend.append(response.headers["x-llmroute-backend"])
                    result.attempts.append(int(response.headers["x-llmroute-attempts"]))

            await asyncio.gather(*(client() for _ in range(clients)))
        result.received = {name: sum(sim.stats.by_path.values()) for name, sim in sims.items()}
    finally:
        await asyncio.to_thread(sidecar.process.stop)
        for sim in sims.values():
            await sim.stop()
    return result


def _spread(values: list[float], unit: str) -> str:
    """`median [min, max]` of the rounds' figures: percentages (unit `%`, from shares), seconds or counts."""
    scale, digits = (100.0, 0) if unit == "%" else (1.0, 2 if unit else 0)
    low, mid, high = (f"{scale * v:.{digits}f}" for v in (min(values), statistics.median(values), max(values)))
    return f"{mid}{unit} [{low}, {high}]"


def section(results: list[Result], clients: int, duration: float, rounds: int) -> str:
    rows = []
    for condition in dict.fromkeys(r.condition for r in results):
        runs = [r for r in results if r.condition == condition]
        rows.append(
            [
                condition,
                str(len(runs)),
                str(sum(len(r.took) for r in runs)),
                _spread([r.share("slow") for r in runs], "%"),
                _spread([sum(a > 1 for a in r.attempts) / len(r.attempts) for r in runs], "%"),
                _spread([float(r.received["slow"] - r.backend.count("slow")) for r in runs], ""),
                _spread([r.quantile(0.5) for r in runs], " s"),
                _spread([r.quantile(0.99) for r in runs], " s"),
                _spread([statistics.fmean(r.took) for r in runs], " s"),
            ]
        )
    headers = [
        "condition",
        "rounds",
        "requests",
        "answered by slow",
        "started a second attempt",
        "other requests to slow",
        "p50",
        "p99",
        "mean",
    ]
    ideal = BACKENDS["quick"][0] + ANSWER_TOKENS * BACKENDS["quick"][1]
    return (
        "## Answer lengths and the latency estimate (bench/lengths)\n\n"
        f"`python -m bench.lengths --clients {clients} --duration {duration:g} --rounds {rounds}`: "
        f"{__doc__.split(chr(10), 2)[2]}\n"
        f"Every request answered by quick at once would take {ideal:.1f} s. Figures are the median over rounds "
        '[min, max]. "Started a second attempt": the share of requests hedged or retried, whichever attempt '
        'answered. "Other requests to slow": what slow received beyond the answers it gave the app (shadow '
        "probes, and attempts that lost a race or were cancelled).\n\n"
        + report.table(headers, rows)
        + "\n\n![Each request's latency against when it was sent, every round](img/lengths.png)\n"
    )


def chart(results: list[Result], path: Path) -> None:
    """Each request's latency against when it was sent, both conditions, every round."""
    plt = charts.pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.4))
    colors: dict[str, str] = {}
    for r in results:
        first = r.condition not in colors
        color = colors.setdefault(r.condition, f"C{len(colors)}")
        ax.scatter(r.sent, r.took, s=9, color=color, alpha=0.5, label=r.condition if first else None)
    ideal = BACKENDS["quick"][0] + ANSWER_TOKENS * BACKENDS["quick"][1]
    ax.axhline(ideal, color="grey", linewidth=0.8, linestyle="--", label=f"answered by quick at once ({ideal:.1f} s)")
    ax.set_xlabel("seconds into the run (sent)")
    ax.set_ylabel("latency the app saw (s)")
    ax.set_ylim(0, None)
    ax.set_title("300-token answers through the sidecar, every round")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(clients: int, duration: float, rounds: int) -> list[Result]:
    """Every round of both conditions, the conditions' order alternated from round to round."""
    results = []
    conditions = [("length-blind (control)", False), ("length-timed", True)]
    with tempfile.TemporaryDirectory(prefix="bench-lengths-") as tmp:
        for round_ in range(rounds):
            for condition, timed in conditions if round_ % 2 == 0 else conditions[::-1]:
                print(f"== round {round_ + 1}, {condition}: {clients} clients for {duration:g} s", flush=True)
                result = asyncio.run(run(f"r{round_}-{timed}", timed, Path(tmp), clients, duration))
                result.condition = condition
                print(f"   {len(result.took)} requests, {100 * result.share('slow'):.0f}% answered by slow", flush=True)
                results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lengths", description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=ROOT / "bench/results/lengths.json")
    parser.add_argument("--report-only", action="store_true", help="redraw the docs from --results, without a run")
    parser.add_argument("--no-docs", action="store_true", help="print the section instead of writing the docs")
    args = parser.parse_args(argv)
    if args.report_only:
        saved = json.loads(args.results.read_text())
        args.clients, args.duration, args.rounds = saved["clients"], saved["duration"], saved["rounds"]
        results = [Result(**r) for r in saved["results"]]
    else:
        results = measure(args.clients, args.duration, args.rounds)
        run_args = {"clients": args.clients, "duration": args.duration, "rounds": args.rounds}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps({**run_args, "results": [asdict(r) for r in results]}))
    text = section(results, args.clients, args.duration, args.rounds)
    if args.no_docs:
        print(text)
        return 0
    report.replace_section(ROOT / "docs/performance.md", "lengths", text)
    chart(results, ROOT / "docs/img/lengths.png")
    print("wrote docs/performance.md (section lengths) and docs/img/lengths.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
