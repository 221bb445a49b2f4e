"""POST /v1/messages and /v1/messages/count_tokens through a running sidecar, with the official anthropic SDK:
native on Anthropic backends (body and headers as sent), translated to chat completions on OpenAI-compatible
ones, failed over between the two, costed, every error in Anthropic's shape, the app's key never upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import pytest

from llmroute.sim import Behavior, Latency, SimProvider

from ..specs import spec_errors
from .harness import APP_KEY, Harness, running

FAST = Behavior(latency=Latency.fixed(0.01), output_tokens=3)
ROUTE_KEY = "sk-route-key-4567"
KEYED = Behavior(latency=Latency.fixed(0.01), output_tokens=3, cached_tokens=5, cache_write_tokens=7, api_key=ROUTE_KEY)
PRICE = {
    "price": {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0, "cachedInputPerMTok": 100.0, "cacheWritePerMTok": 1250.0}
}
KEYED_EXTRA = {"apiKeyEnv": "ROUTE_KEY", "capabilities": ["tools"], **PRICE}
ORDERED = {"strategy": "ordered"}
ASK: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]
TOOLS: Any = [
    {
        "name": "weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


@pytest.fixture(autouse=True)
def _route_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTE_KEY", ROUTE_KEY)


def assert_key_kept(sim: SimProvider) -> None:
    """The backend got the route's key, and never the app's."""
    headers = sim.stats.last_headers
    assert APP_KEY not in json.dumps(headers)
    if sim.kind == "anthropic":
        assert headers["x-api-key"] == ROUTE_KEY and "authorization" not in headers
    else:
        assert headers["authorization"] == f"Bearer {ROUTE_KEY}" and "x-api-key" not in headers


async def stream_tool_call(client: anthropic.AsyncAnthropic) -> Any:
    """Stream an answer that calls the weather tool; its final message, once text and call are checked."""
    async with client.messages.stream(model="chat", max_tokens=100, messages=ASK, tools=TOOLS) as stream:
        text = "".join([chunk async for chunk in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "token token token"
    assert final.stop_reason == "tool_use"
    use = final.content[-1]
    assert use.type == "tool_use" and use.input == {"city": "sim"}
    return final


def cost_of(usage: Any) -> float:
    """USD for an Anthropic usage at PRICE (cache reads and writes at their own rates)."""
    read, written = usage.cache_read_input_tokens or 0, usage.cache_creation_input_tokens or 0
    return (usage.input_tokens * 1000.0 + read * 100.0 + written * 1250.0 + usage.output_tokens * 2000.0) / 1e6


async def test_native_json_passes_body_and_headers_through(tmp_path: Path) -> None:
    body: dict[str, Any] = {
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Think first."},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me see.", "signature": "sig-1"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Done thinking."},
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": "Go on.", "cache_control": {"type": "ephemeral"}}]},
        ],
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    async with running(tmp_path, {"claude": ("anthropic", KEYED)}, backend_extra={"claude": KEYED_EXTRA}) as h:
        client = h.anthropic(default_headers={"anthropic-beta": "prompt-caching-2024-07-31"})
        raw = await client.messages.with_raw_response.create(
            model="chat", max_tokens=2048, extra_body={"future_field": {"kept": True}}, **body
        )
        message = await raw.parse()
        sim = h.sims["claude"]
        sent = sim.stats.last_json
        assert sent == {"model": "claude-model", "max_tokens": 2048, "future_field": {"kept": True}, **body}
        known = {name: value for name, value in sent.items() if name != "future_field"}
        assert spec_errors("anthropic", "CreateMessageParams", known) == []
        assert sim.stats.last_headers["anthropic-beta"] == "prompt-caching-2024-07-31"
        assert sim.stats.last_headers["anthropic-version"] == client.default_headers["anthropic-version"]
        assert_key_kept(sim)
        assert spec_errors("anthropic", "Message", message.model_dump()) == []
        assert message.content[0].type == "text" and message.content[0].text == "token token token"
        usage = message.usage
        assert (usage.output_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (3, 5, 7)
        assert raw.headers["x-llmroute-backend"] == "claude"
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(cost_of(message.usage))


async def test_native_stream_events_pass_through_with_cost(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", KEYED)}, backend_extra={"claude": KEYED_EXTRA}) as h:
        final = await stream_tool_call(h.anthropic(auth_token="app-bearer-token", api_key=None))
        assert final.usage.output_tokens == 3 and final.usage.cache_read_input_tokens == 5
        sim = h.sims["claude"]
        assert "app-bearer-token" not in json.dumps(sim.stats.last_headers)
        assert_key_kept(sim)
        # On the wire: the upstream's events unchanged, then the cost as an SSE comment.
        async with h.http() as http:
            request = {"model": "chat", "max_tokens": 100, "messages": ASK, "stream": True}
            response = await http.post("/messages", json=request, headers={"anthropic-version": "2023-06-01"})
        events = [block for block in response.text.split("\n\n") if block]
        assert events[-1].startswith(": x-llmroute-cost-usd=")
        kinds = [e.split("\n")[0].removeprefix("event: ") for e in events[:-1]]
        assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
        for block in events[:-1]:
            data = json.loads(block.split("\n")[1].removeprefix("data: "))
            if data["type"] != "ping":  # documented, but not in the spec's event union
                assert spec_errors("anthropic", "MessageStreamEvent", data) == []


async def test_translated_to_chat_with_a_tool_round_trip(tmp_path: Path) -> None:
    async with running(tmp_path, {"gpt": KEYED}, backend_extra={"gpt": KEYED_EXTRA}) as h:
        client = h.anthropic()
        raw = await client.messages.with_raw_response.create(
            model="chat", max_tokens=100, system="Use tools.", messages=ASK, tools=TOOLS, stop_sequences=["END"]
        )
        called = await raw.parse()
        sim = h.sims["gpt"]
        sent = sim.stats.last_json
        assert spec_errors("openai", "CreateChatCompletionRequest", sent) == []
        assert sent["messages"][0] == {"role": "system", "content": "Use tools."}
        assert sent["stop"] == ["END"] and sent["max_completion_tokens"] == 100
        assert_key_kept(sim)
        assert spec_errors("anthropic", "Message", called.model_dump()) == []
        assert called.stop_reason == "tool_use"
        use = called.content[-1]
        assert use.type == "tool_use" and (use.name, use.input) == ("weather", {"city": "sim"})
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(cost_of(called.usage))
        assert called.usage.cache_read_input_tokens == 5
        # The tool's result goes back; the chat backend sees the call and its result as chat messages.
        history: Any = [
            *ASK,
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in called.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
        ]
        final = await client.messages.create(model="chat", max_tokens=100, messages=history, tools=TOOLS)
        sent = sim.stats.last_json
        assert spec_errors("openai", "CreateChatCompletionRequest", sent) == []
        assert sent["messages"][1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": '{"city":"sim"}'}
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}
        assert final.stop_reason == "end_turn" and [b.type for b in final.content] == ["text"]


async def test_translated_stream_with_tool_call_and_usage(tmp_path: Path) -> None:
    async with running(tmp_path, {"gpt": KEYED}, backend_extra={"gpt": KEYED_EXTRA}) as h:
        final = await stream_tool_call(h.anthropic())
        prompt = len(h.sims["gpt"].stats.last_body) // 4  # the sim counts about 4 bytes a token
        assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (prompt - 5, 5)
        assert final.usage.output_tokens == 3
        assert spec_errors("anthropic", "Message", final.model_dump()) == []
        assert_key_kept(h.sims["gpt"])


async def test_failover_from_a_failing_native_backend_to_a_translated_one(tmp_path: Path) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(500,), api_key=ROUTE_KEY)
    backends: Any = {"claude": ("anthropic", broken), "gpt": KEYED}
    extra = {"claude": KEYED_EXTRA, "gpt": KEYED_EXTRA}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        client = h.anthropic()
        raw = await client.messages.with_raw_response.create(model="chat", max_tokens=50, messages=ASK, tools=TOOLS)
        assert raw.headers["x-llmroute-backend"] == "gpt" and raw.headers["x-llmroute-attempts"] == "2"
        assert (await raw.parse()).content[-1].type == "tool_use"
        async with client.messages.stream(model="chat", max_tokens=50, messages=ASK) as stream:
            final = await stream.get_final_message()
        assert stream.response.headers["x-llmroute-backend"] == "gpt"
        assert final.content[0].type == "text" and final.stop_reason == "end_turn"
        assert h.sims["claude"].stats.requests == 2
        assert_key_kept(h.sims["claude"])
        assert_key_kept(h.sims["gpt"])


async def test_what_chat_cannot_carry_goes_to_a_native_backend_or_is_a_400(tmp_path: Path) -> None:
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    async with running(tmp_path, {"gpt": FAST, "claude": ("anthropic", FAST)}, spec=ORDERED) as h:
        raw = await h.anthropic().messages.with_raw_response.create(
            model="chat", max_tokens=2048, messages=ASK, thinking=thinking
        )
        assert raw.headers["x-llmroute-backend"] == "claude"  # gpt ranks first but cannot carry thinking
        assert h.sims["gpt"].stats.requests == 0
    async with running(tmp_path, {"gpt": FAST}) as h:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await h.anthropic().messages.create(model="chat", max_tokens=2048, messages=ASK, thinking=thinking)
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "invalid_request_error"
        assert "gpt: cannot carry thinking" in refused.value.body["error"]["message"]
        assert h.sims["gpt"].stats.requests == 0


async def _error(h: Harness, kind: type[anthropic.APIStatusError], **extra: Any) -> dict[str, Any]:
    """The body of the error the SDK raised, checked against Anthropic's published error shape."""
    request: dict[str, Any] = {"model": "chat", "max_tokens": 10, "messages": ASK, **extra}
    with pytest.raises(kind) as failure:
        await h.anthropic().messages.create(**request)
    body: Any = failure.value.body
    assert spec_errors("anthropic", "ErrorResponse", body) == [], body
    return dict(body["error"])


async def test_errors_are_in_anthropic_shape(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h:
        missing = await _error(h, anthropic.NotFoundError, model="no-such-model")
        assert missing["type"] == "not_found_error" and "no-such-model" in missing["message"]
        assert (await _error(h, anthropic.BadRequestError, max_tokens=0))["type"] == "invalid_request_error"
        h.sims["claude"].set_behavior(Behavior(error_rate=1.0, error_statuses=(400,)))
        # The backend's own 400 comes back as it wrote it.
        assert (await _error(h, anthropic.BadRequestError))["message"].startswith("Simulated error")
        h.sims["claude"].set_behavior(Behavior(rate_limit_rate=1.0, retry_after=2.0))
        with pytest.raises(anthropic.RateLimitError) as limited:
            await h.anthropic().messages.create(model="chat", max_tokens=10, messages=ASK)
        assert limited.value.response.headers["retry-after"] == "2"
        assert (await _error(h, anthropic.RateLimitError))["type"] == "rate_limit_error"  # ejected now
        async with h.http() as http:  # requests the SDK would not send
            for response in (
                await http.get("/messages"),
                await http.post("/messages", content=b"{not json"),
                await http.post("/messages", content=b'{"model": "chat", "messages": ' + b"[" * 50_000),
                await http.post("/messages/count_tokens", json={"model": "chat"}),
                await http.post("/messages", json={"model": "chat", "max_tokens": 10, "messages": ASK, "stream": 1}),
            ):
                assert response.status_code in (400, 405)
                assert spec_errors("anthropic", "ErrorResponse", response.json()) == []
                assert response.json()["error"]["type"] == "invalid_request_error"
    broken = Behavior(error_rate=1.0, error_statuses=(500,))
    async with running(tmp_path, {"gpt": broken}) as h:
        unavailable = await _error(h, anthropic.InternalServerError)
        assert unavailable["type"] == "overloaded_error" and "no backend of route chat" in unavailable["message"]
        h.sims["gpt"].set_behavior(Behavior(error_rate=1.0, error_statuses=(400,)))
        translated = await _error(h, anthropic.BadRequestError)  # an OpenAI-shaped 400, reshaped
        assert translated == {"type": "invalid_request_error", "message": "Simulated error: Bad Request."}
        h.sims["gpt"].set_behavior(Behavior(hang_rate=1.0))
        timeout = await _error(h, anthropic.InternalServerError, extra_headers={"x-llmroute-timeout-ms": "300"})
        assert timeout["type"] == "timeout_error" and "deadline exceeded" in timeout["message"]


async def test_the_servers_own_errors_are_in_anthropic_shape_too(tmp_path: Path) -> None:
    """A body over --max-body-bytes is refused by the HTTP server before any handler runs: the Anthropic
    SDK still gets its own error class, for /v1/messages and for any call carrying anthropic-version."""
    async with running(tmp_path, {"claude": ("anthropic", FAST)}, argv=["--max-body-bytes", "1000"]) as h:
        big: Any = [{"role": "user", "content": "x" * 5000}]
        with pytest.raises(anthropic.RequestTooLargeError) as info:
            await h.anthropic(max_retries=0).messages.create(model="chat", max_tokens=10, messages=big)
        # The type Anthropic's API itself sends with a 413 (its errors page lists it; the published
        # OpenAPI document's error union omits it, so this body is checked by hand).
        assert info.value.body == {
            "type": "error",
            "error": {"type": "request_too_large", "message": "request body too large"},
            "request_id": None,
        }
        async with h.http() as http:
            other = await http.post("/chat/completions", content=b"x" * 5000)
            assert other.status_code == 413 and other.json()["error"]["type"] == "invalid_request_error"
        assert h.sims["claude"].stats.requests == 0


@pytest.mark.parametrize("kind", ["anthropic", "openai"])
async def test_a_stream_broken_after_its_start_ends_with_an_error_event(tmp_path: Path, kind: str) -> None:
    breaks = Behavior(latency=Latency.fixed(0.01), output_tokens=5, midstream_failure_rate=1.0)
    async with running(tmp_path, {"only": (kind, breaks)}) as h:
        with pytest.raises(anthropic.APIStatusError) as failure:
            async with h.anthropic().messages.stream(model="chat", max_tokens=50, messages=ASK) as stream:
                async for _ in stream:
                    pass
        body: Any = failure.value.body
        assert spec_errors("anthropic", "ErrorResponse", body) == []
        assert body["error"]["type"] == "api_error" and "failed mid-stream" in body["error"]["message"]


async def test_count_tokens_native_then_estimated(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", KEYED)}, backend_extra={"claude": KEYED_EXTRA}) as h:
        raw = await h.anthropic().messages.with_raw_response.count_tokens(model="chat", messages=ASK, tools=TOOLS)
        sim = h.sims["claude"]
        assert sim.stats.last_path == "/v1/messages/count_tokens"
        assert sim.stats.last_json == {"model": "claude-model", "messages": ASK, "tools": TOOLS}
        assert spec_errors("anthropic", "CountMessageTokensParams", sim.stats.last_json) == []
        assert (await raw.parse()).input_tokens == len(sim.stats.last_body) // 4  # the provider's own count
        assert raw.headers["x-llmroute-backend"] == "claude" and "x-llmroute-estimate" not in raw.headers
        assert_key_kept(sim)
        with pytest.raises(anthropic.NotFoundError):
            await h.anthropic().messages.count_tokens(model="nope", messages=ASK)
    async with running(tmp_path, {"gpt": FAST}) as h:
        raw = await h.anthropic().messages.with_raw_response.count_tokens(model="chat", messages=ASK, tools=TOOLS)
        counted = await raw.parse()
        assert raw.headers["x-llmroute-estimate"] == "true"
        assert spec_errors("anthropic", "CountMessageTokensResponse", counted.model_dump()) == []
        assert counted.input_tokens == len(json.dumps([None, ASK, TOOLS], separators=(",", ":"))) // 4
        assert h.sims["gpt"].stats.requests == 0  # an estimate costs no backend call


async def test_count_tokens_skips_a_failing_native_backend(tmp_path: Path) -> None:
    broken = Behavior(error_rate=1.0, error_statuses=(503,))
    backends: Any = {"down": ("anthropic", broken), "up": ("anthropic", FAST)}
    async with running(tmp_path, backends) as h:
        raw = await h.anthropic().messages.with_raw_response.count_tokens(model="chat", messages=ASK)
        assert raw.headers["x-llmroute-backend"] == "up" and (await raw.parse()).input_tokens > 0
        assert h.sims["down"].stats.requests == 1
        h.sims["up"].set_behavior(Behavior(error_rate=1.0, error_statuses=(400,)))
        with pytest.raises(anthropic.BadRequestError) as refused:  # the request's fault: returned as written
            await h.anthropic().messages.count_tokens(model="chat", messages=ASK)
        assert refused.value.body == {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "Simulated error: Bad Request."},
            "request_id": None,
        }
        h.sims["up"].set_behavior(broken)
        raw = await h.anthropic().messages.with_raw_response.count_tokens(model="chat", messages=ASK)
        assert raw.headers["x-llmroute-estimate"] == "true"  # no backend could count: estimated, and said so


async def test_an_image_in_a_tool_result_needs_a_vision_backend(tmp_path: Path) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/chart.png"}}
    history: Any = [
        *ASK,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [image]}]},
    ]
    extra = {"blind": {"capabilities": ["tools"]}, "seeing": {"capabilities": ["tools", "vision"]}}
    backends: Any = {"blind": ("anthropic", FAST), "seeing": ("anthropic", FAST)}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        raw = await h.anthropic().messages.with_raw_response.create(
            model="chat", max_tokens=10, messages=history, tools=TOOLS
        )
        assert raw.headers["x-llmroute-backend"] == "seeing"
        assert h.sims["blind"].stats.requests == 0
