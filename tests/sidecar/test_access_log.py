"""The access log as an operator reads it: `llmroute sidecar` as a real process, one JSON line per request on
its stdout, with the request's facts and none of its secrets or text."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from llmroute.sidecar.accesslog import trace_id
from llmroute.sim import Behavior, Latency, SimProvider

from .harness import backend_entry, chat_body, route_doc, sidecar_process

KEY = "sk-live-access-log-KEY-7731"
APP_KEY = "sk-app-own-KEY-5519"
PROMPT = "PROMPT-TEXT-never-logged"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _route(tmp_path: Path, sim: SimProvider) -> Path:
    secrets = tmp_path / "secrets" / "keys"
    secrets.mkdir(parents=True)
    (secrets / "openai").write_text(KEY)
    entry = backend_entry("primary", sim, apiKeySecretRef={"name": "keys", "key": "openai"})
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(route_doc({"models": ["chat"], "backends": [entry]}, name="support")))
    return path


def _ask(**extra: Any) -> dict[str, Any]:
    return chat_body(messages=[{"role": "user", "content": PROMPT}], **extra)


async def test_one_line_per_request_with_its_facts_and_no_secret_or_text(tmp_path: Path) -> None:
    primary = SimProvider("primary", "openai", Behavior(latency=Latency.fixed(0.01), api_key=KEY), seed=1)
    upstream = SimProvider("upstream", "openai", Behavior(latency=Latency.fixed(0.01)), seed=2)
    await primary.start()
    await upstream.start()
    out = tmp_path / "stdout"
    argv = ["--routes", str(_route(tmp_path, primary)), "--secrets-dir", str(tmp_path / "secrets")]
    argv += ["--passthrough", f"openai={upstream.url}"]
    try:
        with out.open("wb") as stdout:
            async with sidecar_process(*argv, stdout=stdout) as (process, port, _admin, _log):
                headers = {"authorization": f"Bearer {APP_KEY}"}
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", headers=headers) as http:
                    traced = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "x-request-id": "app-req-1"}
                    answer = await http.post("/chat/completions", json=_ask(), headers=traced)
                    assert answer.status_code == 200
                    text = answer.json()["choices"][0]["message"]["content"]
                    batch = {"x-llmroute-priority": "batch"}
                    async with http.stream("POST", "/chat/completions", json=_ask(stream=True), headers=batch) as s:
                        streamed = (await s.aread()).decode()
                    assert streamed.rstrip().endswith("data: [DONE]")
                    unrouted = await http.post("/chat/completions", json=_ask(model="gpt-unrouted"))
                    assert unrouted.status_code == 200
                    # The simulator has no moderations endpoint: its own 404 comes back through the sidecar.
                    assert (await http.post("/moderations", json={"input": PROMPT})).status_code == 404
                    bad = await http.post("/chat/completions", json=_ask(), headers={"x-llmroute-priority": "vip"})
                    assert bad.status_code == 400
                    assert (await http.get("/models")).status_code == 200
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await primary.stop()
        await upstream.stop()
    raw = out.read_text()
    lines = [json.loads(line) for line in raw.splitlines()]
    assert len(lines) == 6, raw
    by_request = {(line["api"], line["route"], line["status"], line["stream"]): line for line in lines}

    plain = by_request[("chat", "support", 200, False)]
    assert plain["trace_id"] == TRACE and plain["request_id"] == "app-req-1"
    assert (plain["model"], plain["backend"], plain["priority"], plain["attempts"]) == ("chat", "primary", "normal", 1)
    assert (plain["method"], plain["path"], plain["outcome"], plain["error"]) == (
        "POST",
        "/v1/chat/completions",
        "success",
        None,
    )
    assert plain["tokens_in"] > 0 and plain["tokens_out"] > 0 and plain["latency_ms"] > 0
    assert plain["ttft_ms"] is None and plain["policy"] is None
    assert isinstance(plain["cost_usd"], float)
    assert plain["time"].endswith("Z") and plain["time"][:4].isdigit()

    stream = by_request[("chat", "support", 200, True)]
    assert stream["priority"] == "batch" and stream["trace_id"] is None
    assert 0 < stream["ttft_ms"] <= stream["latency_ms"] and stream["tokens_out"] > 0
    assert stream["request_id"] and stream["request_id"] != plain["request_id"]

    passed = by_request[("chat", "passthrough", 200, False)]
    assert (passed["backend"], passed["outcome"]) == ("openai", "success")
    other = by_request[("passthrough", "passthrough", 404, False)]
    assert (other["path"], other["backend"], other["outcome"]) == ("/v1/moderations", "openai", "client_error")

    refused = by_request[("chat", None, 400, False)]
    assert (refused["outcome"], refused["error"], refused["backend"]) == ("client_error", "invalid_priority", None)
    assert by_request[("models", None, 200, False)]["method"] == "GET"

    for secret in (KEY, APP_KEY, PROMPT, text):
        assert secret not in raw


async def test_access_log_off_writes_nothing(tmp_path: Path) -> None:
    primary = SimProvider("primary", "openai", Behavior(latency=Latency.fixed(0.01), api_key=KEY), seed=1)
    await primary.start()
    out = tmp_path / "stdout"
    argv = ["--routes", str(_route(tmp_path, primary)), "--secrets-dir", str(tmp_path / "secrets")]
    try:
        with out.open("wb") as stdout:
            async with sidecar_process(*argv, "--access-log", "off", stdout=stdout) as (process, port, _admin, _log):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as http:
                    assert (await http.post("/chat/completions", json=_ask())).status_code == 200
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await primary.stop()
    assert out.read_bytes() == b""


async def test_a_stdout_nobody_reads_costs_lines_not_requests(tmp_path: Path) -> None:
    """stdout is a pipe that is never read: once it and the buffer are full, lines are dropped and counted,
    while every request is still answered and the sidecar still stops on SIGTERM."""
    primary = SimProvider("primary", "openai", Behavior(latency=Latency.fixed(0.001), api_key=KEY), seed=1)
    await primary.start()
    argv = ["--routes", str(_route(tmp_path, primary)), "--secrets-dir", str(tmp_path / "secrets")]
    argv += ["--access-log-buffer", "20"]
    try:
        async with sidecar_process(*argv, stdout=subprocess.PIPE) as (process, port, admin, _log):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=30) as http:
                # About 450 bytes a line: 400 lines overflow a 64 kB pipe and the 20-line buffer.
                statuses: list[int] = []
                for _ in range(400):
                    statuses.append((await http.post("/chat/completions", json=_ask())).status_code)
                assert statuses == [200] * 400
                metrics = (await http.get(f"http://127.0.0.1:{admin}/metrics")).text
            dropped = _sample(metrics, "llmroute_access_log_dropped_total")
            assert dropped > 0
            process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        await primary.stop()


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_only_a_valid_traceparent_gives_a_trace_id() -> None:
    assert trace_id(f"00-{TRACE}-00f067aa0ba902b7-01") == TRACE
    assert trace_id(f"01-{TRACE}-00f067aa0ba902b7-00-future-fields") == TRACE  # a later version: its trace id
    for bad in (None, "", f"ff-{TRACE}-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f067aa0ba902b7-01",
                f"00-{TRACE.upper()}-00f067aa0ba902b7-01", f"00-{TRACE}00f067aa0ba902b7-01x"):  # fmt: skip
        assert trace_id(bad) is None, bad


async def test_a_policy_refusal_and_an_observed_limit_are_in_the_policy_field(tmp_path: Path) -> None:
    primary = SimProvider("primary", "openai", Behavior(latency=Latency.fixed(0.01), api_key=KEY), seed=1)
    await primary.start()
    policy = {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMPolicy",
        "metadata": {"name": "shop-limits", "namespace": "default"},
        "spec": {
            "budgets": [{"name": "watch", "window": "30d", "limitUSD": 0.000001, "action": "Observe"}],
            "rateLimits": [{"name": "one-a-minute", "requestsPerMinute": 1}],
        },
    }
    policies = tmp_path / "policy.yaml"
    policies.write_text(yaml.safe_dump(policy))
    out = tmp_path / "stdout"
    route = _route(tmp_path, primary)
    doc = yaml.safe_load(route.read_text())
    doc["spec"]["backends"][0]["price"] = {"inputPerMTok": 1.0, "outputPerMTok": 2.0}  # over the Observe budget
    route.write_text(yaml.safe_dump(doc))
    argv = ["--routes", str(route), "--secrets-dir", str(tmp_path / "secrets"), "--policies", str(policies)]
    try:
        with out.open("wb") as stdout:
            async with sidecar_process(*argv, stdout=stdout) as (process, port, _admin, _log):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as http:
                    await _clear_of_a_minute_turn()
                    assert (await http.post("/chat/completions", json=_ask())).status_code == 200
                    refused = await http.post("/chat/completions", json=_ask())
                    assert refused.status_code == 429 and refused.headers["x-llmroute-policy"] == "shop-limits"
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await primary.stop()
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert (first["status"], first["policy"]) == (200, {"observed": ["shop-limits"]})
    assert (second["status"], second["error"], second["policy"]) == (
        429,
        "rate_limit_exceeded",
        {"refused_by": "shop-limits"},
    )


async def test_a_stream_that_broke_off_and_was_not_continued_claims_no_tokens_or_cost(tmp_path: Path) -> None:
    # A priced backend that breaks every stream off mid-answer, and no backend that could continue it: the app
    # gets an error event, and the line says so without inventing a usage that never came (not 0 USD).
    broken = Behavior(latency=Latency.fixed(0.01), midstream_failure_rate=1.0, output_tokens=6, api_key=KEY)
    primary = SimProvider("primary", "openai", broken, seed=3)
    await primary.start()
    route = _route(tmp_path, primary)
    doc = yaml.safe_load(route.read_text())
    doc["spec"]["backends"][0]["price"] = {"inputPerMTok": 1.0, "outputPerMTok": 2.0}
    route.write_text(yaml.safe_dump(doc))
    out = tmp_path / "stdout"
    argv = ["--routes", str(route), "--secrets-dir", str(tmp_path / "secrets")]
    try:
        with out.open("wb") as stdout:
            async with sidecar_process(*argv, stdout=stdout) as (process, port, _admin, _log):
                async with (
                    httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as http,
                    http.stream("POST", "/chat/completions", json=_ask(stream=True)) as response,
                ):
                    assert response.status_code == 200  # the first chunk went out before the break
                    streamed = (await response.aread()).decode()
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        await primary.stop()
    assert '"stream_interrupted"' in streamed and "data: [DONE]" not in streamed
    [line] = [json.loads(raw) for raw in out.read_text().splitlines()]
    assert (line["outcome"], line["error"], line["backend"]) == ("error", "stream_interrupted", "primary")
    assert (line["tokens_in"], line["tokens_out"], line["cost_usd"]) == (None, None, None)


async def _clear_of_a_minute_turn(margin: float = 5.0) -> None:
    """Wait out the last seconds of a UTC minute, so a per-minute rate limit's window (the sidecar's wall clock,
    in another process) does not turn between two requests that must share it."""
    left = 60.0 - time.time() % 60.0
    if left < margin:
        await asyncio.sleep(left + 0.1)
