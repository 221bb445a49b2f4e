"""`llmroute demo` as a user runs it: the installed console script, no terminal, a JSON summary to check."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmroute.demo.observe import BackendView, SidecarView
from llmroute.demo.scenario import script
from llmroute.demo.traffic import Result
from llmroute.demo.view import LiveView

DURATION = 36
"""Long enough for the degraded primary to win traffic back once it recovers (three fast shadow answers in
a row, a few seconds), and for a warm-up (17%, 6 s) in which the backends' overlapping lognormal latencies
and the first second's exploration do not decide the primary's share, short enough for a test."""
LLMROUTE = Path(sys.executable).with_name("llmroute")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """One run of the demo, shared by the tests below."""
    out = tmp_path_factory.mktemp("demo") / "summary.json"
    env = {**os.environ, "PYTHONWARNINGS": "always::ResourceWarning"}
    done = subprocess.run(
        [str(LLMROUTE), "demo", "--duration", str(DURATION), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=DURATION + 30,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done, json.loads(out.read_text())


def _phase(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in summary["phases"] if p["name"] == name)


def test_every_phase_is_run_and_summarised(demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, summary = demo
    assert [p["name"] for p in summary["phases"]] == ["warm-up", "incident", "cascade", "recovery"]
    for phase in summary["phases"]:
        assert phase["requests"] > 20, phase
        assert phase["latency_ms"]["p50"] is not None
        assert phase["name"] in done.stdout
    for column in ("requests", "success", "p50 ms", "p95 ms", "p99 ms", "spend $", "gpt41", "claude", "deepseek"):
        assert column in done.stdout
    assert summary["total"]["spend_usd"] > 0


def test_critical_and_normal_requests_never_fail(demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, summary = demo
    for priority in ("critical", "normal"):
        figures = summary["priorities"][priority]
        failures = [e for p in summary["phases"] for e in p["priorities"][priority]["error_examples"]]
        assert figures["success_rate"] == 1.0, f"{priority}: {figures['errors']} e.g. {failures}"
    for api, figures in summary["apis"].items():  # every inbound API, batch included
        assert figures["requests"] > 0 and figures["success_rate"] == 1.0, (api, figures["errors"])


def test_traffic_leaves_the_degraded_primary_and_returns(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, summary = demo
    assert _phase(summary, "warm-up")["share"]["gpt41"] >= 0.3
    # 8.5 s answers: the router stops sending app traffic there (a stray hedge winner at most).
    assert _phase(summary, "incident")["share"]["gpt41"] <= 0.05
    assert _phase(summary, "cascade")["share"]["gpt41"] <= 0.05
    # Once healthy again it wins traffic back before the run ends: at most 8.5 s for the answers it still
    # owed to come back, then within seconds.
    recovery = _phase(summary, "recovery")
    seconds = [t for t in summary["timeline"] if t["t_s"] >= recovery["start_s"] and t["requests"] >= 5]
    assert max(t["share"]["gpt41"] for t in seconds) >= 0.25, seconds


def test_failing_second_backend_loses_its_traffic(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    _, summary = demo
    assert _phase(summary, "incident")["share"]["claude"] >= 0.3  # it took over from the slow primary
    assert _phase(summary, "cascade")["share"]["claude"] <= 0.2  # until it started failing
    # Not asserted: an ejection. Claude fails 35% with 5xx and 20% with 429; its first 5xx costs it its rank
    # (the failure rate), so when none of the ~10 requests it has out as the cascade begins draws a 429 (about
    # 1 run in 10) it loses its traffic without ever being ejected. A CI run at load 3 saw just that.


def test_batch_goes_to_the_cheapest_backend(demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    _, summary = demo
    batch = summary["priorities"]["batch"]
    assert batch["success_rate"] == 1.0
    assert batch["share"]["deepseek"] >= 0.8
    assert batch["spend_usd"] < summary["priorities"]["normal"]["spend_usd"]


def test_without_a_terminal_it_prints_plain_progress_and_shuts_down_cleanly(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    done, _ = demo
    progress = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(progress) >= DURATION // 6  # a line every 3 s, late ones included on a loaded machine
    assert any("incident" in line for line in progress)
    assert "\x1b[" not in done.stdout
    for trouble in ("Traceback", "Warning", "Unclosed", "was destroyed", "never awaited"):
        assert trouble not in done.stderr, done.stderr


def test_on_a_terminal_the_panel_is_redrawn_in_place() -> None:
    out = io.StringIO()
    view = LiveView(out, tty=True)
    phases = script(10)
    sidecar = SidecarView(backends=[BackendView("gpt41", "ejected", 8.5, 9.1, 3, 0.4)])
    results = [Result(1.0, "normal", False, "chat", True, 0.3, backend="gpt41")]
    view.update(1.0, 10, phases[0], sidecar, results)
    first = out.getvalue()
    view.update(4.0, 10, phases[1], sidecar, results)
    second = out.getvalue()[len(first) :]
    assert "gpt41" in first and "8,500 ms" in first and "ejected" in first
    assert second.startswith(f"\x1b[{first.count(chr(10))}F\x1b[J")  # back to the panel's top, clear, redraw
    assert "incident" in second
