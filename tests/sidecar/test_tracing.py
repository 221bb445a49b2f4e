"""Traces: an app's W3C traceparent reaches every backend call, and with an OTLP endpoint set the sidecar
exports a request span with one child per attempt, carrying the GenAI attributes, to a real collector."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmroute.sidecar.tracing import TraceParent, TracingUnavailable, from_environment, parse_traceparent
from llmroute.sim import Behavior, Latency
from llmroute.sim.otlp import Collector, Span

from .harness import chat_body, running
from .test_passthrough import APP_KEY
from .test_passthrough import setup as passthrough_setup

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{APP_SPAN}-01"
KEY = "sk-trace-secret-0042"
FAST = Behavior(latency=Latency.fixed(0.005))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TRACEPARENT, TraceParent(TRACE_ID, APP_SPAN, "01")),
        (f"01-{TRACE_ID}-{APP_SPAN}-00-future", TraceParent(TRACE_ID, APP_SPAN, "00")),  # a later version's extra
        (f"00-{TRACE_ID}-{APP_SPAN}-01-extra", None),  # version 00 has exactly four fields
        (f"ff-{TRACE_ID}-{APP_SPAN}-01", None),  # version ff is invalid
        (f"00-{'0' * 32}-{APP_SPAN}-01", None),  # all-zero ids are invalid
        (f"00-{TRACE_ID}-{'0' * 16}-01", None),
        (TRACEPARENT.upper(), None),  # lowercase hex only
        ("garbage", None),
    ],
)
def test_traceparent_is_parsed_as_w3c_says(header: str, expected: TraceParent | None) -> None:
    assert parse_traceparent({"traceparent": header}) == expected


def test_tracing_is_off_unless_an_otlp_endpoint_is_set() -> None:
    assert from_environment({}) is None
    assert from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}) is None
    assert from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}) is None


async def test_an_apps_traceparent_is_continued_to_the_backend_with_tracing_off(tmp_path: Path) -> None:
    async with running(tmp_path, {"only": FAST}) as h, h.http() as http:
        headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque,other=1"}
        answer = await http.post("/chat/completions", json=chat_body(), headers=headers)
        assert answer.status_code == 200
        sent = h.sims["only"].stats.last_headers
        version, trace_id, span_id, flags = sent["traceparent"].split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert span_id not in (APP_SPAN, "0" * 16)
        assert sent["tracestate"] == "vendor=opaque,other=1"

        await http.post("/chat/completions", json=chat_body(), headers=headers)
        assert h.sims["only"].stats.last_headers["traceparent"].split("-")[2] != span_id  # a new span per call

        await http.post("/chat/completions", json=chat_body())
        assert "traceparent" not in h.sims["only"].stats.last_headers  # no trace asked for, none started


@contextlib.asynccontextmanager
async def collecting(monkeypatch: pytest.MonkeyPatch, protocol: str = "http/protobuf") -> AsyncIterator[Collector]:
    """A collector on a free port, and the OTEL_* variables that send the sidecar's spans to it."""
    collector = Collector(protocol)
    await collector.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "checkout")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield collector
    finally:
        await collector.stop()


def _keyed(tmp_path: Path) -> tuple[dict[str, dict[str, object]], list[str]]:
    """Both backends' keys from a Secret directory, as a cluster would mount them."""
    secrets = tmp_path / "secrets" / "llm-keys"
    secrets.mkdir(parents=True)
    (secrets / "openai").write_text(KEY)
    ref = {"apiKeySecretRef": {"name": "llm-keys", "key": "openai"}}
    return {"flaky": ref, "steady": ref}, ["--secrets-dir", str(tmp_path / "secrets")]


async def test_a_fallback_is_exported_as_a_request_span_with_two_attempt_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra, argv = _keyed(tmp_path)
    flaky = Behavior(error_rate=1.0, error_statuses=(503,), api_key=KEY)
    steady = Behavior(latency=Latency.fixed(0.01), output_tokens=7, api_key=KEY)
    async with collecting(monkeypatch) as collector:
        async with (
            running(
                tmp_path,
                {"flaky": flaky, "steady": steady},
                spec={"strategy": "ordered"},
                backend_extra=extra,
                argv=argv,
            ) as h,
            h.http() as http,
        ):
            answer = await http.post("/chat/completions", json=chat_body(), headers={"traceparent": TRACEPARENT})
            assert answer.status_code == 200 and answer.headers["x-llmroute-backend"] == "steady"
            sent = h.sims["steady"].stats.last_headers["traceparent"]
        # The sidecar has stopped, which exports what was still buffered.
        spans = [s for s in collector.spans if s.trace_id == TRACE_ID]
    request = _one(spans, kind="SERVER")
    attempts = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    assert len(spans) == 3 and len(attempts) == 2
    assert request.parent_span_id == APP_SPAN  # the app's span is the request's parent
    assert {a.parent_span_id for a in attempts} == {request.span_id}  # attempts are siblings under the request
    failed, answered = attempts
    assert sent == f"00-{TRACE_ID}-{answered.span_id}-01"  # the backend call carries the attempt span's id

    assert request.name == "chat chat"
    assert request.resource["service.name"] == "checkout"
    assert request.resource["deployment.environment.name"] == "test"
    assert request.attributes["llmroute.attempts"] == 2
    assert request.attributes["llmroute.backend"] == "steady"
    assert request.attributes["llmroute.route"] == "chat"
    assert request.attributes["llmroute.priority"] == "normal"
    assert request.attributes["gen_ai.usage.output_tokens"] == 7
    assert request.status == "UNSET"

    assert failed.name == "chat flaky-model"
    assert failed.status == "ERROR"
    assert failed.attributes["error.type"] == "5xx"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.attributes["llmroute.backend"] == "flaky"

    port = h.sims["steady"].port
    assert answered.name == "chat steady-model"
    assert answered.status == "UNSET"
    assert {
        k: answered.attributes.get(k)
        for k in (
            "gen_ai.operation.name",
            "gen_ai.provider.name",
            "gen_ai.request.model",
            "gen_ai.response.model",
            "gen_ai.usage.output_tokens",
            "server.address",
            "server.port",
            "llmroute.route",
            "llmroute.backend",
            "llmroute.priority",
            "llmroute.attempt",
        )
    } == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "steady-model",
        "gen_ai.response.model": "steady-model",  # what the backend's answer named
        "gen_ai.usage.output_tokens": 7,
        "server.address": "127.0.0.1",
        "server.port": port,
        "llmroute.route": "chat",
        "llmroute.backend": "steady",
        "llmroute.priority": "normal",
        "llmroute.attempt": 2,
    }
    assert answered.attributes["gen_ai.usage.input_tokens"] > 0
    assert "llmroute.cost_usd" in answered.attributes
    # Neither the backends' key nor any header is exported, in any span or resource.
    assert collector.bodies and all(KEY.encode() not in body for body in collector.bodies)
    assert all(KEY not in json.dumps(s.to_json()) for s in collector.spans)


async def test_with_tracing_on_a_request_without_traceparent_starts_a_trace_and_streams_are_traced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_body = chat_body(stream=True, stream_options={"include_usage": True})
    async with collecting(monkeypatch) as collector:
        async with running(tmp_path, {"only": FAST}) as h, h.http() as http:
            async with http.stream("POST", "/chat/completions", json=stream_body) as answer:
                assert answer.status_code == 200
                text = b"".join([chunk async for chunk in answer.aiter_bytes()])
            assert b"[DONE]" in text
            sent = h.sims["only"].stats.last_headers["traceparent"]
        spans = list(collector.spans)
    request = _one(spans, kind="SERVER")
    attempt = _one(spans, kind="CLIENT")
    assert request.parent_span_id == ""  # a new trace
    version, trace_id, span_id, flags = sent.split("-")
    assert (version, trace_id, span_id) == ("00", request.trace_id, attempt.span_id)
    assert int(flags, 16) & 1  # sampled, by the default sampler (the SDK may set the level-2 `random` flag too)
    assert attempt.parent_span_id == request.span_id
    assert attempt.attributes["gen_ai.request.stream"] is True
    assert attempt.attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert attempt.attributes["gen_ai.response.model"] == "only-model"
    assert attempt.attributes["gen_ai.usage.output_tokens"] > 0
    assert request.end_ns >= attempt.end_ns  # the request ends when the app has read the stream


async def test_the_request_span_of_a_continued_stream_carries_the_whole_answers_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first backend breaks the stream off after one chunk; the prefill backend continues it. The request
    # span says what the app was billed (both attempts), each attempt span what its backend reported.
    broken = Behavior(latency=Latency.fixed(0.005), midstream_failure_rate=1.0, output_tokens=6)
    backends = {"broken": broken, "rescuer": Behavior(latency=Latency.fixed(0.005), output_tokens=4)}
    price = {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0}
    extra: dict[str, dict[str, object]] = {
        "broken": {"price": price},
        "rescuer": {"capabilities": ["prefill"], "price": price},
    }
    stream_body = chat_body(stream=True, stream_options={"include_usage": True})
    async with collecting(monkeypatch) as collector:
        async with (
            running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h,
            h.http() as http,
            http.stream("POST", "/chat/completions", json=stream_body) as answer,
        ):
            lines = [line async for line in answer.aiter_lines()]
        events = [line[6:] for line in lines if line.startswith("data: ")]
        comments = [line for line in lines if line.startswith(":")]
        assert events[-1] == "[DONE]"
        usage = json.loads(events[-2])["usage"]
        spans = list(collector.spans)
    request = _one(spans, kind="SERVER")
    attempts = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    assert [a.attributes["llmroute.backend"] for a in attempts] == ["broken", "rescuer"]
    assert request.attributes["llmroute.outcome"] == "success"
    billed = (request.attributes["gen_ai.usage.input_tokens"], request.attributes["gen_ai.usage.output_tokens"])
    assert billed == (usage["prompt_tokens"], usage["completion_tokens"])
    continued = attempts[1].attributes
    assert usage["prompt_tokens"] > continued["gen_ai.usage.input_tokens"]  # the broken attempt's prompt counts
    assert usage["completion_tokens"] == continued["gen_ai.usage.output_tokens"] + 1  # and its one chunk ("token")
    cost = float(next(line for line in comments if line.startswith(": x-llmroute-cost-usd=")).split("=")[1])
    assert cost > continued["llmroute.cost_usd"]  # the broken attempt's part is in what the app was told
    assert request.attributes["llmroute.cost_usd"] == pytest.approx(cost, abs=1e-8)


async def test_spans_can_be_exported_over_otlp_grpc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with collecting(monkeypatch, "grpc") as collector:
        async with running(tmp_path, {"only": FAST}) as h, h.http() as http:
            answer = await http.post("/chat/completions", json=chat_body(), headers={"traceparent": TRACEPARENT})
            assert answer.status_code == 200
        spans = [span for span in collector.spans if span.trace_id == TRACE_ID]
    request, attempt = _one(spans, kind="SERVER"), _one(spans, kind="CLIENT")
    assert request.parent_span_id == APP_SPAN and attempt.parent_span_id == request.span_id
    assert attempt.attributes["gen_ai.request.model"] == "only-model"


async def test_the_sampler_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with collecting(monkeypatch) as collector:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        async with running(tmp_path, {"only": FAST}) as h, h.http() as http:
            assert (await http.post("/chat/completions", json=chat_body())).status_code == 200
            sent = h.sims["only"].stats.last_headers["traceparent"]
        assert collector.spans == []
    assert not int(sent.split("-")[3], 16) & 1  # the backend learns the trace was not sampled


async def test_metrics_carry_the_genai_names_and_labels(tmp_path: Path) -> None:
    broken = Behavior(error_rate=1.0, error_statuses=(500,))
    steady = Behavior(latency=Latency.fixed(0.01), output_tokens=5)
    async with running(tmp_path, {"broken": broken, "steady": steady}, spec={"strategy": "ordered"}) as h:
        async with h.http() as http:
            assert (await http.post("/chat/completions", json=chat_body())).status_code == 200
            async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as answer:
                await answer.aread()
        async with httpx.AsyncClient(base_url=h.admin_url) as admin:
            metrics = (await admin.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name.startswith("gen_ai_client_")
        for sample in family.samples
    }

    def value(name: str, model: str, **labels: str) -> float:
        genai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "openai", "gen_ai_request_model": model}
        return samples.get((name, tuple(sorted({**genai, **labels}.items()))), 0.0)

    # Both requests failed over from `broken` to `steady` (shadow probes of `steady` may add to its series).
    assert value("gen_ai_client_operation_duration_seconds_count", "steady-model", error_type="") >= 2
    assert value("gen_ai_client_operation_duration_seconds_count", "broken-model", error_type="5xx") >= 2
    answered = value("gen_ai_client_token_usage_count", "steady-model", gen_ai_token_type="output")
    assert answered >= 2
    assert value("gen_ai_client_token_usage_sum", "steady-model", gen_ai_token_type="output") == 5 * answered
    assert value("gen_ai_client_token_usage_count", "steady-model", gen_ai_token_type="input") == answered
    assert value("gen_ai_client_operation_time_to_first_chunk_seconds_count", "steady-model") == 1  # streams only
    assert value("gen_ai_client_token_usage_count", "broken-model", gen_ai_token_type="output") == 0
    le = {dict(labels)["le"] for (name, labels) in samples if name == "gen_ai_client_operation_duration_seconds_bucket"}
    assert {"0.01", "81.92", "+Inf"} <= le  # the conventions' bucket boundaries
    assert any(dict(labels).get("le") == "6.7108864e+07" for (name, labels) in samples if "token_usage_bucket" in name)


async def test_a_passthrough_request_is_traced_with_the_upstream_call_as_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with collecting(monkeypatch) as collector:
        async with passthrough_setup(tmp_path) as s, s.openai() as client:
            await client.moderations.create(
                input="x", extra_headers={"traceparent": TRACEPARENT}, extra_query={"token": "q-secret-77"}
            )
            [got] = s.upstream.received
            port = s.upstream.port
        spans = [span for span in collector.spans if span.trace_id == TRACE_ID]
    server, client_span = _one(spans, kind="SERVER"), _one(spans, kind="CLIENT")
    assert len(spans) == 2
    assert server.parent_span_id == APP_SPAN and client_span.parent_span_id == server.span_id
    assert got.headers["traceparent"] == f"00-{TRACE_ID}-{client_span.span_id}-01"  # the upstream's parent
    assert server.name == client_span.name == "POST"
    assert {k: server.attributes.get(k) for k in ("url.path", "llmroute.route", "http.response.status_code")} == {
        "url.path": "/v1/moderations",
        "llmroute.route": "passthrough",
        "http.response.status_code": 200,
    }
    assert client_span.attributes["url.full"] == f"http://127.0.0.1:{port}/v1/moderations"  # no query string
    assert client_span.attributes["server.port"] == port and client_span.status == "UNSET"
    # The app's own key and its query string stay out of every span.
    assert all(secret not in json.dumps(span.to_json()) for span in spans for secret in (APP_KEY, "q-secret-77"))


COUNT = {"model": "chat", "messages": [{"role": "user", "content": "How many tokens is this?"}]}


async def test_count_tokens_is_traced_with_a_client_span_per_backend_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = Behavior(error_rate=1.0, error_statuses=(503,))
    estimated_trace = "5" * 32
    async with collecting(monkeypatch) as collector:
        async with running(tmp_path, {"down": ("anthropic", down), "up": ("anthropic", FAST)}) as h, h.http() as http:
            counted = await http.post("/messages/count_tokens", json=COUNT, headers={"traceparent": TRACEPARENT})
            assert counted.status_code == 200 and counted.headers["x-llmroute-backend"] == "up"
            sent = h.sims["up"].stats.last_headers["traceparent"]
            h.sims["up"].set_behavior(down)
            headers = {"traceparent": f"00-{estimated_trace}-{APP_SPAN}-01"}
            estimated = await http.post("/messages/count_tokens", json=COUNT, headers=headers)
            assert estimated.headers["x-llmroute-estimate"] == "true"
        spans = [span for span in collector.spans if span.trace_id == TRACE_ID]
        estimate_spans = [span for span in collector.spans if span.trace_id == estimated_trace]
    request = _one(spans, kind="SERVER")
    failed, answered = sorted((s for s in spans if s.kind == "CLIENT"), key=lambda s: s.start_ns)
    assert request.parent_span_id == APP_SPAN and {failed.parent_span_id, answered.parent_span_id} == {request.span_id}
    assert sent == f"00-{TRACE_ID}-{answered.span_id}-01"  # the backend call carries its span's id
    assert (request.name, failed.name, answered.name) == (
        "count_tokens chat",
        "count_tokens down-model",
        "count_tokens up-model",
    )
    assert {
        k: request.attributes.get(k) for k in ("gen_ai.operation.name", "gen_ai.request.model", "gen_ai.provider.name")
    } == {
        "gen_ai.operation.name": "count_tokens",
        "gen_ai.request.model": "chat",
        "gen_ai.provider.name": "anthropic",
    }
    assert request.attributes["llmroute.backend"] == "up" and request.attributes["llmroute.attempts"] == 2
    assert request.attributes["http.response.status_code"] == 200 and request.attributes["llmroute.estimate"] is False
    assert request.status == "UNSET"
    assert failed.status == "ERROR" and failed.attributes["error.type"] == "5xx"
    assert failed.attributes["http.response.status_code"] == 503 and failed.attributes["llmroute.backend"] == "down"
    assert answered.status == "UNSET" and answered.attributes["llmroute.outcome"] == "success"
    assert {
        k: answered.attributes.get(k)
        for k in ("gen_ai.provider.name", "gen_ai.request.model", "server.port", "llmroute.attempt")
    } == {
        "gen_ai.provider.name": "anthropic",
        "gen_ai.request.model": "up-model",
        "server.port": h.sims["up"].port,
        "llmroute.attempt": 2,
    }
    # Both backends failing: two failed calls, and the request answered with the sidecar's estimate.
    estimate = _one(estimate_spans, kind="SERVER")
    assert len(estimate_spans) == 3 and all(s.status == "ERROR" for s in estimate_spans if s.kind == "CLIENT")
    assert estimate.attributes["llmroute.estimate"] is True and "llmroute.backend" not in estimate.attributes


async def test_count_tokens_continues_an_apps_traceparent_with_tracing_off(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h, h.http() as http:
        headers = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque"}
        assert (await http.post("/messages/count_tokens", json=COUNT, headers=headers)).status_code == 200
        sent = h.sims["claude"].stats.last_headers
        assert sent["traceparent"].startswith(f"00-{TRACE_ID}-") and sent["traceparent"].endswith("-01")
        assert APP_SPAN not in sent["traceparent"] and sent["tracestate"] == "vendor=opaque"
        assert (await http.post("/messages/count_tokens", json=COUNT)).status_code == 200
        assert "traceparent" not in h.sims["claude"].stats.last_headers


def _one(spans: list[Span], *, kind: str) -> Span:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, [(s.kind, s.name) for s in spans]
    return found[0]


def test_an_endpoint_without_the_sdk_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llmroute.sidecar.otel", None)  # as if the `otel` extra were not installed
    with pytest.raises(TracingUnavailable, match=r"pip install 'llmroute\[otel\]'"):
        from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
