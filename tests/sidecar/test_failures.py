"""Provider faults with a right answer: prompts too long for a backend, and a failure that accounts for every
backend of the route."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import openai
import pytest

from llmroute.http import Request, StreamingResponse
from llmroute.sidecar.app import SidecarApp
from llmroute.sim import Behavior, Latency, SimProvider

from .harness import backend_entry, chat_body, running

FAST = Behavior(latency=Latency.fixed(0.01))
LONG = "word " * 400  # about 2,000 bytes: 500 tokens as the sim counts, 500 as the sidecar estimates


async def test_a_backend_whose_declared_window_is_too_small_is_skipped_up_front(tmp_path: Path) -> None:
    extra = {"small": {"contextWindow": 100}, "large": {"contextWindow": 200_000}}
    async with running(
        tmp_path, {"small": FAST, "large": FAST}, spec={"strategy": "ordered"}, backend_extra=extra
    ) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-backend"] == "large"
        assert raw.headers["x-llmroute-attempts"] == "1"
        assert h.sims["small"].stats.requests == 0
    async with running(tmp_path, {"small": FAST}, backend_extra={"small": {"contextWindow": 100}}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": LONG}])
        assert caught.value.code == "context_length_exceeded"
        assert "small: context window of 100 tokens is smaller than the prompt" in caught.value.message
        assert h.sims["small"].stats.requests == 0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_context_length_exceeded_goes_to_a_larger_backend_never_the_same_again(tmp_path: Path, kind: str) -> None:
    # The tight backend declares no window; its provider's own 400 (OpenAI's code, Anthropic's "prompt is too
    # long") sends the request to the roomy one, whatever retryOn says, instead of back to the app.
    tight = Behavior(latency=Latency.fixed(0.01), context_window=100)
    spec = {"strategy": "ordered", "retry": {"attempts": 2, "retryOn": ["5xx"]}}
    async with running(tmp_path, {"tight": (kind, tight), "roomy": FAST}, spec=spec) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-backend"] == "roomy"
        assert raw.headers["x-llmroute-attempts"] == "2"
        assert h.sims["tight"].stats.requests == 1  # tried once, never again within the call
        # A short prompt still goes to the first backend: a context-length refusal says nothing of its health.
        short = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
        assert short.headers["x-llmroute-backend"] == "tight"


async def test_a_prompt_too_long_for_every_backend_gets_the_providers_own_400(tmp_path: Path) -> None:
    tight = Behavior(latency=Latency.fixed(0.01), context_window=100)
    async with running(tmp_path, {"tight": tight}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": LONG}])
        assert caught.value.code == "context_length_exceeded"
        assert "maximum context length is 100 tokens" in caught.value.message


async def test_the_503_accounts_for_every_backend_once(tmp_path: Path) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(500,))
    backends = {"a": broken, "b": broken, "c": FAST}
    extra = {"a": {"capabilities": ["tools"]}, "b": {"capabilities": ["tools"]}}  # c has no tools
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    async with running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h:
        with pytest.raises(openai.InternalServerError) as caught:
            await h.client().chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "x"}],
                tools=tools,  # type: ignore[arg-type]
            )
        assert caught.value.status_code == 503
        message = caught.value.message
        assert "a: backend answered 500" in message
        assert "b: backend answered 500" in message
        assert "c: skipped, does not support tools" in message
        for name in ("a", "b", "c"):
            assert message.count(f"{name}: ") == 1, message


async def test_a_first_token_is_never_awaited_without_a_limit_on_a_backend_with_no_history(tmp_path: Path) -> None:
    # `newbie` joins the route first in order and has never answered; its first token takes 8 s. The route's
    # other backend answers in ~10 ms, so the stream is judged by that and hedged after about a second.
    quick = Behavior(latency=Latency.fixed(0.01))
    async with running(tmp_path, {"veteran": quick}) as h, h.http() as http:
        for _ in range(10):  # the veteran's history
            async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
                await response.aread()
        newbie = SimProvider("newbie", "openai", Behavior(latency=Latency.fixed(8.0)), seed=1)
        await newbie.start()
        try:
            spec = {**h.spec, "strategy": "ordered", "backends": [backend_entry("newbie", newbie), *h.spec["backends"]]}
            h.write_spec(spec)
            assert h.sidecar.files is not None and h.sidecar.files.reload()
            started = time.monotonic()
            async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
                await response.aread()
            assert response.headers["x-llmroute-backend"] == "veteran"
            assert time.monotonic() - started < 6.0  # well before the newbie's 8 s first token
            assert newbie.stats.requests == 1
        finally:
            await newbie.stop()


async def test_a_stream_that_goes_silent_mid_answer_is_cut_by_its_backends_normal_gaps(tmp_path: Path) -> None:
    # Chunks come every ~10 ms; once ten streams have shown that, a 20 s silence half-way is an interruption
    # after the 2 s floor, ending the stream with an SSE error that says so, never a truncated success.
    steady = Behavior(latency=Latency.fixed(0.01), token_delay=0.01, output_tokens=8)
    async with running(tmp_path, {"steady": steady}) as h, h.http() as http:
        for _ in range(10):
            async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
                assert "[DONE]" in (await response.aread()).decode()
        h.sims["steady"].set_behavior(dataclasses.replace(steady, midstream_stall_rate=1.0, stall=20.0))
        started = time.monotonic()
        async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
            text = (await response.aread()).decode()
        assert time.monotonic() - started < 12.0  # not the 20 s silence
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert "[DONE]" not in events
        error = json.loads(events[-1])["error"]
        assert error["code"] == "stream_interrupted"
        assert "no data from upstream within 2s" in error["message"]


async def test_a_backend_whose_model_list_answers_while_completions_fail_gets_one_trial_at_a_time(
    tmp_path: Path,
) -> None:
    # An outage of the completions endpoint alone: GET /models still answers, so the probe passes. The
    # backend is half-open: one trial request, whose failure falls over at once and ejects it again, instead
    # of every request going back to it. When it really recovers, `ordered` gives it its traffic back.
    spec = {"strategy": "ordered", "outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "300ms"}}
    down = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(503,), models_stay_up=True)
    async with running(tmp_path, {"primary": down, "backup": FAST}, spec=spec) as h, h.http() as http:
        answered = []
        for _ in range(30):  # about 3 s: several ejections, probes and trials
            response = await http.post("/chat/completions", json=chat_body())
            assert response.status_code == 200
            answered.append(response.headers["x-llmroute-backend"])
            await asyncio.sleep(0.1)
        assert set(answered) == {"backup"}
        primary = h.sims["primary"].stats
        probes = primary.by_path["GET /v1/models"]
        assert probes >= 1
        # Two failures ejected it; after that, at most one trial per passed probe.
        assert primary.by_path["POST /v1/chat/completions"] <= 2 + probes
        h.sims["primary"].set_behavior(FAST)
        for _ in range(100):
            response = await http.post("/chat/completions", json=chat_body())
            if response.headers["x-llmroute-backend"] == "primary":
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the recovered primary never got its traffic back")
        assert [
            (await http.post("/chat/completions", json=chat_body())).headers["x-llmroute-backend"] for _ in range(3)
        ] == ["primary"] * 3


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_that_breaks_off_is_continued_on_a_prefill_backend_as_one_answer(
    tmp_path: Path, kind: str
) -> None:
    # The first backend sends its first chunk ("token") and drops the connection. The route's prefill
    # backend is asked to continue from that text, and its chunks reach the app under the same id and
    # model: one whole answer ending in [DONE], no error event.
    broken = Behavior(latency=Latency.fixed(0.01), midstream_failure_rate=1.0, output_tokens=6)
    rescuer = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
    extra = {"rescuer": {"capabilities": ["prefill"]}}
    backends = {"broken": broken, "rescuer": (kind, rescuer)}
    async with running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h, h.http() as http:
        body = chat_body(stream=True, stream_options={"include_usage": True})
        async with http.stream("POST", "/chat/completions", json=body) as response:
            text = (await response.aread()).decode()
        assert response.headers["x-llmroute-backend"] == "broken"  # the stream the app started on
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert not any("error" in c for c in chunks)
        assert len({c["id"] for c in chunks}) == 1 and len({c["model"] for c in chunks}) == 1
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert content == "token" + "token token token token"  # the broken backend's first chunk, then the rest
        assert [c["choices"][0]["delta"] for c in chunks if c["choices"]].count(
            {"role": "assistant", "content": ""}
        ) == 1
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] == 4 + 1  # the continuation's, plus the text sent before (estimated)
        assert ": x-llmroute-cost-usd=" in text
        sent = h.sims["rescuer"].stats.last_json["messages"][-1]
        if kind == "openai":
            assert sent == {"role": "assistant", "content": "token", "prefix": True}
        else:
            assert sent == {"role": "assistant", "content": [{"type": "text", "text": "token"}]}


async def test_a_continuation_that_fails_ends_the_stream_with_the_original_interruption(tmp_path: Path) -> None:
    # The prefill backend refuses (as a provider that rejects a prefill does, with a 400): the app gets a
    # clean error naming what broke its stream, never the continuation's own error.
    broken = Behavior(latency=Latency.fixed(0.01), midstream_failure_rate=1.0)
    refuses = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(400,))
    extra = {"rescuer": {"capabilities": ["prefill"]}}
    backends = {"broken": broken, "rescuer": refuses}
    async with running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h, h.http() as http:
        async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
            text = (await response.aread()).decode()
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        assert "[DONE]" not in events
        error = json.loads(events[-1])["error"]
        assert error["code"] == "stream_interrupted"
        assert error["message"].startswith("backend broken failed mid-stream")
        assert h.sims["rescuer"].stats.requests >= 1


async def test_a_class_bounds_its_streams_idle_limit(tmp_path: Path) -> None:
    # No history is needed when the class sets the bounds: a 500 ms ceiling cuts a 20 s silence at once.
    stalls = Behavior(latency=Latency.fixed(0.01), token_delay=0.01, midstream_stall_rate=1.0, stall=20.0)
    spec = {"priorities": {"normal": {"timeout": "10s", "streamIdle": {"min": "200ms", "max": "500ms"}}}}
    async with running(tmp_path, {"stalls": stalls}, spec=spec) as h, h.http() as http:
        started = time.monotonic()
        async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
            text = (await response.aread()).decode()
        assert time.monotonic() - started < 8.0
        error = json.loads([line for line in text.splitlines() if line.startswith("data: ")][-1][6:])["error"]
        assert "no data from upstream within 0.5s" in error["message"]


async def test_a_stream_the_server_closes_before_sending_gives_back_its_slot_and_attempt(tmp_path: Path) -> None:
    # The server closes a streamed response without stepping it when the app is gone by the time the answer
    # is handed over (or at shutdown). Its batch slot, in-flight count and attempt must come back all the
    # same: a lost slot would shrink the class's maxConcurrency for good.
    spec = {"priorities": {"batch": {"maxConcurrency": 1, "timeout": "10s"}}}
    async with running(tmp_path, {"primary": FAST}, spec=spec) as h:
        app = SidecarApp(h.sidecar.router, h.sidecar.dispatcher, h.sidecar.metrics)  # the sidecar's own parts
        body = json.dumps(chat_body(stream=True)).encode()
        headers = {"content-type": "application/json", "x-llmroute-priority": "batch"}
        request = Request("POST", "/v1/chat/completions", "", headers, body, None)
        for _ in range(2):  # the second would wait for the slot the first never gave back
            response = await asyncio.wait_for(app(request), 5)
            assert isinstance(response, StreamingResponse)
            await response.chunks.aclose()  # as the server does: never stepped
        runtime = h.sidecar.router.by_model["chat"]
        assert runtime.candidates[0].stats.in_flight == 0
        in_flight = h.sidecar.metrics.registry.get_sample_value("llmroute_requests_in_flight", {"route": "chat"})
        assert in_flight == 0
