"""`python -m bench.overhead.stragglers`: what the balancer's per-request reads of one backend cost while many
of its requests are still waiting from before its latest answer.

Every request reads, for each candidate backend, its expected latency and when it would count as stalled
(`BackendStats.expected_latency`, `stall_due`). Requests still waiting that were sent before the backend's
latest answer ("stragglers": an LLM backend answers short prompts before long ones) can say nothing about
either. This times the two reads together on a backend with 0 to 1,000 stragglers and 5 requests sent since
its latest answer, in process, with no server: run it with each build's interpreter to compare builds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit

from llmroute.sidecar.balancer.estimator import BackendStats

STRAGGLERS = (0, 10, 100, 1000)
FRESH = 5
"""Requests in flight sent after the backend's latest answer."""


def backend(stragglers: int) -> tuple[BackendStats, float]:
    """A backend with 50 answers of history, then `stragglers` requests, one that is answered, and `FRESH`
    more, all still waiting; returns it and the time to read it at."""
    stats, now = BackendStats(), 0.0
    for _ in range(50):
        token = stats.start(now)
        now += 0.01
        stats.finish(token, now)
    for i in range(stragglers):
        stats.start(now + i * 0.001)
    now += 1.0
    answered = stats.start(now)
    for i in range(FRESH):
        stats.start(now + 0.01 + i * 0.001)
    stats.finish(answered, now + 0.5)
    return stats, now + 0.6


def microseconds(stragglers: int, number: int, repeat: int) -> float:
    """Median over `repeat` runs of the two reads' time per request, in microseconds."""
    stats, now = backend(stragglers)

    def reads() -> None:
        stats.expected_latency(now, load_sensitive=False)
        stats.stall_due(now)

    return statistics.median(timeit.repeat(reads, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead.stragglers", description=__doc__)
    parser.add_argument("--number", type=int, default=5000, help="reads per timed run")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per row (the median is printed)")
    args = parser.parse_args(argv)
    for n in STRAGGLERS:  # warm up: the interpreter specialises the code on its first runs
        microseconds(n, args.number, 1)
    print("| stragglers | µs per request (expected_latency + stall_due) |")
    print("| ---: | ---: |")
    for n in STRAGGLERS:
        print(f"| {n:,} | {microseconds(n, args.number, args.repeat):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
