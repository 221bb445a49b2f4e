"""Run wrk against a URL with the chat-completion script and read back its figures."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.common.procs import pinned

CHAT_SCRIPT = Path(__file__).with_name("chat.lua")
_MARK = "WRK_JSON "


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: counts, and latencies in milliseconds (wrk records microseconds)."""

    requests: int
    duration_s: float
    errors: int
    """Socket errors: connect, read, write and timeouts."""
    non_2xx: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    @property
    def failed(self) -> int:
        return self.errors + self.non_2xx


def parse(output: str) -> WrkResult:
    """The result from wrk's output: the JSON line the script's done() prints."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            doc = json.loads(line[len(_MARK) :])
            ms = {k[:-3] + "_ms": doc[k] / 1000 for k in ("mean_us", "p50_us", "p90_us", "p99_us", "p999_us", "max_us")}
            return WrkResult(
                requests=doc["requests"],
                duration_s=doc["duration_us"] / 1e6,
                errors=doc["errors"],
                non_2xx=doc["non_2xx"],
                **ms,
            )
    raise ValueError(f"no {_MARK.strip()} line in wrk's output:\n{output}")


def run(
    url: str,
    *,
    connections: int,
    duration_s: float,
    threads: int | None = None,
    script: Path = CHAT_SCRIPT,
    env: dict[str, str] | None = None,
    cpus: str | None = None,
) -> WrkResult:
    """Run wrk for `duration_s` seconds with `connections` keep-alive connections (threads: one per core at most)."""
    threads = threads or max(1, min(connections, os.cpu_count() or 1))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        pinned(argv, cpus),
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=duration_s + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)
