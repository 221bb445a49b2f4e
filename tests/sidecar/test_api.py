"""The OpenAI-compatible surface, through the official SDK: answers, headers, streams, every error status."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llmroute.sim import Behavior, Latency

from ..specs import spec_errors
from .harness import chat_body, running

FAST = Behavior(latency=Latency.fixed(0.01))


async def test_completion_with_routing_headers_and_cost(tmp_path: Path) -> None:
    price = {"price": {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0}}
    async with running(tmp_path, {"primary": FAST}, backend_extra={"primary": price}) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
        completion = raw.parse()
        assert completion.choices[0].message.content
        assert raw.headers["x-llmroute-route"] == "chat"
        assert raw.headers["x-llmroute-backend"] == "primary"
        assert raw.headers["x-llmroute-attempts"] == "1"
        usage = completion.usage
        assert usage is not None
        expected = (usage.prompt_tokens * 1000.0 + usage.completion_tokens * 2000.0) / 1e6
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(expected)
        assert 0 <= float(raw.headers["x-llmroute-overhead-ms"]) < 50
        # The upstream got the backend's own model name, not the app's alias.
        assert h.sims["primary"].stats.last_json["model"] == "primary-model"


async def test_models_lists_route_models(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}, spec={"models": ["chat", "chat-mini"]}) as h:
        models = await h.client().models.list()
        assert sorted(m.id for m in models.data) == ["chat", "chat-mini"]


async def test_streaming_with_usage_and_anthropic_translation(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h:
        stream = await h.client().chat.completions.create(
            model="chat",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text.strip()
        assert usage is not None and usage.completion_tokens > 0
        sent = h.sims["claude"].stats.last_json
        assert sent["system"] == "be brief" and sent["stream"] is True
        assert h.sims["claude"].stats.last_path == "/v1/messages"


async def test_stream_without_include_usage_has_no_usage_chunk(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h:
        stream = await h.client().chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [c async for c in stream]
        assert chunks and all(c.usage is None for c in chunks)
        # Upstream was still asked for usage, so cost is counted.
        assert h.sims["primary"].stats.last_json["stream_options"] == {"include_usage": True}


async def test_bad_json_is_400_in_openai_shape(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h, h.http() as http:
        response = await http.post(
            "/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "invalid_json" and "not valid JSON" in error["message"]
        assert h.sims["primary"].stats.requests == 0


async def test_unknown_model_is_404_naming_known_models(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h:
        with pytest.raises(openai.NotFoundError) as info:
            await h.client().chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
        assert "gpt-5" in info.value.message and "chat" in info.value.message


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}, argv=["--max-body-bytes", "1000"]) as h, h.http() as http:
        body = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
        response = await http.post("/chat/completions", json=body)
        assert response.status_code == 413
        assert "error" in response.json()
        assert h.sims["primary"].stats.requests == 0


async def test_invalid_priority_and_timeout_headers_are_400(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h, h.http() as http:
        bad_priority = await http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-priority": "vip"})
        assert bad_priority.status_code == 400 and "x-llmroute-priority" in bad_priority.json()["error"]["message"]
        bad_timeout = await http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-timeout-ms": "-5"})
        assert bad_timeout.status_code == 400


async def test_backend_400_is_returned_not_retried(tmp_path: Path) -> None:
    invalid = Behavior(error_rate=1.0, error_statuses=(400,))
    async with running(tmp_path, {"a": invalid, "b": invalid}, spec={"strategy": "ordered"}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 400
        assert response.json()["error"]["message"]  # the backend's own message, in OpenAI's shape
        assert response.headers["x-llmroute-attempts"] == "1"
        app_requests = [s for s in h.sims.values() if b"hello" in s.stats.last_body]
        assert len(app_requests) == 1  # the other backend may get a shadow probe, never the app's request


async def test_request_without_messages_is_400_before_any_backend(tmp_path: Path) -> None:
    async with running(tmp_path, {"a": FAST}) as h, h.http() as http:
        response = await http.post("/chat/completions", json={"model": "chat", "messages": "hi"})
        assert response.status_code == 400 and "'messages'" in response.json()["error"]["message"]
        assert h.sims["a"].stats.requests == 0


async def test_a_stream_flag_that_is_not_a_boolean_is_400_naming_it(tmp_path: Path) -> None:
    # The sidecar answers JSON or SSE by `stream`: "true" or 1 is refused, never read one way here and
    # another by the backend. Null is OpenAI's "not set".
    async with running(tmp_path, {"a": FAST}) as h, h.http() as http:
        for path, body in (
            ("/chat/completions", chat_body(stream="true")),
            ("/completions", {"model": "chat", "prompt": "hi", "stream": 1}),
            ("/responses", {"model": "chat", "input": "hi", "stream": "yes"}),
        ):
            response = await http.post(path, json=body)
            assert response.status_code == 400, (path, response.text)
            assert "'stream' must be a boolean" in response.json()["error"]["message"]
        assert h.sims["a"].stats.requests == 0
        assert (await http.post("/chat/completions", json=chat_body(stream=None))).status_code == 200


async def test_every_backend_rate_limited_is_429_with_retry_after(tmp_path: Path) -> None:
    limited = Behavior(rate_limit_rate=1.0, retry_after=7)
    async with running(tmp_path, {"a": limited, "b": limited}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["type"] == "rate_limit_error"


async def test_no_backend_can_serve_is_503_listing_each_backend(tmp_path: Path) -> None:
    broken = Behavior(error_rate=1.0, error_statuses=(500,))
    async with running(tmp_path, {"a": broken, "b": broken}, spec={"retry": {"attempts": 1}}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert "a: backend answered 500" in message and "b: backend answered 500" in message
        assert response.headers["x-llmroute-attempts"] == "2"


async def test_deadline_exceeded_is_504(tmp_path: Path) -> None:
    hang = Behavior(hang_rate=1.0)
    async with running(tmp_path, {"a": hang}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-timeout-ms": "300"})
        assert response.status_code == 504
        assert "deadline exceeded" in response.json()["error"]["message"]


async def test_capability_filtering(tmp_path: Path) -> None:
    extra = {"plain": {}, "tooled": {"capabilities": ["tools"]}}
    async with running(tmp_path, {"plain": FAST, "tooled": FAST}, backend_extra=extra) as h:
        tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        for _ in range(5):
            raw = await h.client().chat.completions.with_raw_response.create(
                model="chat",
                messages=[{"role": "user", "content": "x"}],
                tools=tools,  # type: ignore[arg-type]
            )
            assert raw.headers["x-llmroute-backend"] == "tooled"
        with pytest.raises(openai.BadRequestError, match="does not support json"):
            await h.client().chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}], response_format={"type": "json_object"}
            )


async def test_requests_for_several_choices_or_logprobs_skip_anthropic_backends(tmp_path: Path) -> None:
    # The Messages API answers with one choice and no log probabilities: such requests go elsewhere, or get
    # a 400 that says why, never a quietly different answer.
    backends: dict[str, Behavior | tuple[str, Behavior]] = {"claude": ("anthropic", FAST), "gpt": FAST}
    spec = {"strategy": "ordered"}
    async with running(tmp_path, backends, spec=spec) as h:
        messages: Any = [{"role": "user", "content": "x"}]
        plain = await h.client().chat.completions.with_raw_response.create(model="chat", messages=messages)
        assert plain.headers["x-llmroute-backend"] == "claude"
        for extra in ({"n": 2}, {"logprobs": True, "top_logprobs": 2}):
            raw = await h.client().chat.completions.with_raw_response.create(model="chat", messages=messages, **extra)
            assert raw.headers["x-llmroute-backend"] == "gpt", extra
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h:
        with pytest.raises(openai.BadRequestError, match="does not support n>1"):
            await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], n=3)
        assert h.sims["claude"].stats.requests == 0


@pytest.mark.parametrize(
    ("extra", "what"),
    [
        ({"temperature": 1.8}, "temperature above 1"),
        ({"seed": 7}, "seed"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}],
                    }
                ]
            },
            "content parts of type 'input_audio'",
        ),
    ],
)
async def test_what_a_translation_cannot_carry_goes_to_a_backend_that_can(
    tmp_path: Path, extra: dict[str, Any], what: str
) -> None:
    # Claude ranks first, but the Messages API has no counterpart for the parameter: the request goes to gpt
    # unchanged, never to claude with the parameter quietly dropped or clamped; with only claude, a 400 names it.
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "x"}], **extra}
    async with running(tmp_path, {"claude": ("anthropic", FAST), "gpt": FAST}, spec={"strategy": "ordered"}) as h:
        raw = await h.client().chat.completions.with_raw_response.create(model="chat", **body)
        assert raw.headers["x-llmroute-backend"] == "gpt"
        sent = h.sims["gpt"].stats.last_json
        assert {k: sent[k] for k in extra} == extra
        assert h.sims["claude"].stats.requests == 0
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().chat.completions.create(model="chat", **body)
        assert caught.value.code == "unsupported_parameter"
        assert f"route chat can serve this request: claude: cannot carry {what}" in caught.value.message
        assert h.sims["claude"].stats.requests == 0


async def test_unparseable_bodies_are_a_400_not_a_crash(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h, h.http() as http:
        deep = b'{"model": "chat", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        response = await http.post("/chat/completions", content=deep, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_json"
        assert h.sims["primary"].stats.requests == 0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_chat_streams_conform_to_the_openai_spec(tmp_path: Path, kind: str) -> None:
    # Every chunk the app gets, native or translated from Anthropic's events, is a valid chat.completion.chunk.
    async with running(tmp_path, {"primary": (kind, FAST)}) as h, h.http() as http:
        body = chat_body(stream=True, stream_options={"include_usage": True}, max_tokens=5)
        async with http.stream("POST", "/chat/completions", json=body) as response:
            lines = [line async for line in response.aiter_lines()]
        events = [line[6:] for line in lines if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks and chunks[-1]["usage"]["completion_tokens"] == 5
        for chunk in chunks:
            assert spec_errors("openai", "CreateChatCompletionStreamResponse", chunk) == [], chunk
        spec = ("openai", "CreateChatCompletionRequest") if kind == "openai" else ("anthropic", "CreateMessageParams")
        assert spec_errors(*spec, h.sims["primary"].stats.last_json) == []


async def test_native_chat_conforms_to_the_openai_spec(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body(max_tokens=20, temperature=0.2))
        assert response.status_code == 200
        assert spec_errors("openai", "CreateChatCompletionResponse", response.json()) == []
        assert spec_errors("openai", "CreateChatCompletionRequest", h.sims["primary"].stats.last_json) == []


async def test_translated_chat_conforms_to_both_specs(tmp_path: Path) -> None:
    # What goes to Anthropic is a valid Messages request, and what comes back is a valid chat.completion
    # (message.refusal included, which the OpenAI spec requires).
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h, h.http() as http:
        response = await http.post("/chat/completions", json=chat_body(max_tokens=20))
        assert response.status_code == 200
        assert spec_errors("openai", "CreateChatCompletionResponse", response.json()) == []
        assert spec_errors("anthropic", "CreateMessageParams", h.sims["claude"].stats.last_json) == []


async def test_admin_endpoints_never_show_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets" / "llm-keys"
    secrets.mkdir(parents=True)
    (secrets / "openai").write_text("sk-supersecret-123")
    keyed = Behavior(latency=Latency.fixed(0.01), api_key="sk-supersecret-123")
    extra = {"primary": {"apiKeySecretRef": {"name": "llm-keys", "key": "openai"}}}
    async with running(
        tmp_path, {"primary": keyed}, backend_extra=extra, argv=["--secrets-dir", str(tmp_path / "secrets")]
    ) as h:
        await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
        assert h.sims["primary"].stats.last_headers["authorization"] == "Bearer sk-supersecret-123"
        async with httpx.AsyncClient(base_url=h.admin_url) as admin:
            for path in ("/metrics", "/debug/routes", "/debug/backends", "/readyz"):
                response = await admin.get(path)
                assert response.status_code == 200, path
                assert "supersecret" not in response.text, path
            routes = (await admin.get("/debug/routes")).json()
            backend = routes["routes"][0]["spec"]["backends"][0]
            assert backend["apiKeySecretRef"] == {"name": "llm-keys", "key": "openai"}
            metrics = (await admin.get("/metrics")).text
            assert 'llmroute_request_duration_seconds_count{api="chat",backend="primary",outcome="success"' in metrics
            assert json.loads((await admin.get("/readyz")).text)["status"] == "ready"


async def test_a_json_request_whose_app_went_away_is_cancelled_with_its_attempts(tmp_path: Path) -> None:
    # The app gives up on a slow JSON answer: the sidecar stops waiting and paying for it at once, rather than
    # running the attempt (and any hedge) to its end.
    slow = Behavior(latency=Latency.fixed(60.0))
    async with running(tmp_path, {"slow": slow}) as h:
        with pytest.raises(openai.APITimeoutError):
            await h.client(timeout=0.5).chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "x"}]
            )
        async with httpx.AsyncClient(base_url=h.admin_url) as admin:
            for _ in range(100):  # well before the backend's 60 s answer
                metrics = (await admin.get("/metrics")).text
                if 'llmroute_request_duration_seconds_count{api="chat",backend="none",outcome="abandoned"' in metrics:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the request was never counted as abandoned:\n{metrics}")
            assert 'llmroute_requests_in_flight{route="chat"} 0.0' in metrics
        for _ in range(100):  # the backend sees its connection closed: no answer is awaited (or billed)
            if h.sims["slow"].stats.disconnects:
                break
            await asyncio.sleep(0.1)
        assert h.sims["slow"].stats.disconnects == 1
