"""One wrk run of one arm and mode, with the proxy's CPU time and memory around it, and the sanity check."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass

from bench.common import procs, wrk
from bench.peers.stack import MODEL, Stack

EXPECTED_TEXT = "Hello! How can I help you today?"


@dataclass(frozen=True)
class Sample:
    """One wrk run: which arm, mode and concurrency, its figures, and the proxy's CPU seconds and RSS."""

    round: int
    mode: str
    connections: int
    arm: str
    result: wrk.WrkResult
    cpu_s: float | None
    rss: int | None

    @property
    def cpu_us_per_request(self) -> float | None:
        return None if self.cpu_s is None else 1e6 * self.cpu_s / max(self.result.requests, 1)


def run(
    stack: Stack, arm: str, mode: str, connections: int, duration: float, round_: int, wrk_cpus: str | None
) -> Sample:
    """wrk against `arm` in `mode`; the proxy's utime + stime over the run and its RSS at the end."""
    pids = stack.pids(arm)
    before = procs.cpu_seconds(pids) if pids else 0.0
    env = {"BENCH_MODEL": MODEL[mode], "BENCH_STREAM": "1" if mode == "stream" else "0"}
    result = wrk.run(stack.urls[arm][mode], connections=connections, duration_s=duration, env=env, cpus=wrk_cpus)
    cpu = procs.cpu_seconds(pids) - before if pids else None
    rss = procs.rss_bytes(pids) if pids else None
    stack.check()
    return Sample(round_, mode, connections, arm, result, cpu, rss)


def answer_text(url: str, mode: str) -> str:
    """The assistant's text of one request, JSON or streamed (deltas joined)."""
    body: dict[str, object] = {"model": MODEL[mode], "messages": [{"role": "user", "content": "hi"}]}
    if mode == "stream":
        body["stream"] = True
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200, (url, response.status)
        raw = response.read().decode()
    if mode == "json":
        text: str = json.loads(raw)["choices"][0]["message"]["content"]
        return text
    deltas = []
    for line in raw.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            for choice in json.loads(line[5:])["choices"]:
                deltas.append(choice["delta"].get("content") or "")
    assert "[DONE]" in raw, (url, raw[-200:])
    return "".join(deltas)


def check(stack: Stack) -> None:
    """Every arm answers both modes with the backend's answer, before anything is measured."""
    for arm, urls in stack.urls.items():
        for mode, url in urls.items():
            text = answer_text(url, mode)
            if text != EXPECTED_TEXT:
                raise RuntimeError(f"{arm} ({mode}) answered {text!r}, expected {EXPECTED_TEXT!r}")
