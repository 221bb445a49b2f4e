"""Anthropic backends over real sockets: chat.completions translated to Messages and back, JSON and SSE."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmroute.sidecar.upstream import Upstream, UpstreamError

PNG = "iVBORw0KGgo="
REQUEST: dict[str, Any] = {
    "model": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use tools."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these, and the weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}},
                {"id": "t2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "t1", "content": "rain"},
        {"role": "tool", "tool_call_id": "t2", "content": [{"type": "text", "text": "sun"}]},
    ],
    "max_completion_tokens": 300,
    "temperature": 0.7,
    "top_p": 0.9,
    "stop": "END",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": "required",
    "user": "u-42",
}
MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-up",
    "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 50, "cache_read_input_tokens": 1000, "output_tokens": 20},
}


async def test_request_translation_and_headers(serve, backend, key) -> None:
    async def reply(received, res) -> None:
        await res.json(200, MESSAGE)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic", model="claude-up"))
    before = json.dumps(REQUEST)
    try:
        await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()

    seen = server.received[0]
    assert (seen.method, seen.target) == ("POST", "/messages")
    assert seen.headers["x-api-key"] == key and seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert json.dumps(REQUEST) == before
    assert seen.json() == {
        "model": "claude-up",
        "max_tokens": 300,
        "system": "Be brief.\n\nUse tools.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these, and the weather?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"city": "Oslo"}},
                    {"type": "tool_use", "id": "t2", "name": "weather", "input": {"city": "Rome"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "rain"},
                    {"type": "tool_result", "tool_use_id": "t2", "content": "sun"},
                ],
            },
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "tools": [
            {
                "name": "weather",
                "description": "Weather by city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "u-42"},
    }


async def test_max_tokens_defaults_and_tool_choice_forms(serve, backend) -> None:
    async def reply(received, res) -> None:
        await res.json(200, MESSAGE)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    base = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": REQUEST["tools"]}
    try:
        await upstream.complete(base, timeout=5)
        await upstream.complete(
            {**base, "max_tokens": 12, "tool_choice": "auto", "parallel_tool_calls": False}, timeout=5
        )
        named = {"type": "function", "function": {"name": "weather"}}
        await upstream.complete({**base, "tool_choice": named}, timeout=5)
    finally:
        await upstream.aclose()
    first, second, third = (r.json() for r in server.received)
    assert first["max_tokens"] == 4096 and "tool_choice" not in first
    assert first["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert second["max_tokens"] == 12
    assert second["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert third["tool_choice"] == {"type": "tool", "name": "weather"}


async def test_response_translation_with_tool_calls_and_cached_usage(serve, backend) -> None:
    async def reply(received, res) -> None:
        await res.json(200, MESSAGE)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        completion = await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()

    parsed = ChatCompletion.model_validate_json(completion.body)
    choice = parsed.choices[0]
    assert parsed.model == "claude-up"
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "toolu_9",
        "weather",
        {"city": "Paris"},
    )
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 1050
    assert (completion.usage.prompt_tokens, completion.usage.cached_tokens) == (1050, 1000)
    assert completion.usage.completion_tokens == 20


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls")],
)
async def test_stop_reasons(serve, backend, stop_reason: str, finish: str) -> None:
    async def reply(received, res) -> None:
        await res.json(200, {**MESSAGE, "stop_reason": stop_reason, "content": [{"type": "text", "text": "x"}]})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        completion = await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()
    assert json.loads(completion.body)["choices"][0]["finish_reason"] == finish


def anthropic_stream() -> list[bytes]:
    def ev(kind: str, doc: dict[str, Any]) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **doc})}\n\n".encode()

    start = {
        **MESSAGE,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 30, "cache_read_input_tokens": 200, "output_tokens": 1},
    }
    tool_start = {"type": "tool_use", "id": "toolu_9", "name": "weather", "input": {}}
    whole = b"".join(
        [
            ev("message_start", {"message": start}),
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            ev("ping", {}),
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "Check"}}),
            ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "ing."}}),
            ev("content_block_stop", {"index": 0}),
            ev("content_block_start", {"index": 1, "content_block": tool_start}),
            ev("content_block_delta", {"index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"ci'}}),
            ev(
                "content_block_delta",
                {"index": 1, "delta": {"type": "input_json_delta", "partial_json": 'ty": "Paris"}'}},
            ),
            ev("content_block_stop", {"index": 1}),
            ev("message_delta", {"delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 25}}),
            ev("message_stop", {}),
        ]
    )
    return [whole[i : i + 97] for i in range(0, len(whole), 97)]  # events split across network writes


@pytest.mark.parametrize("app_wants_usage", [False, True])
async def test_stream_translation(serve, backend, drain, app_wants_usage: bool) -> None:
    async def reply(received, res) -> None:
        await res.sse(anthropic_stream())

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    request = {**REQUEST, "stream": True}
    if app_wants_usage:
        request["stream_options"] = {"include_usage": True}
    try:
        stream = await upstream.stream(request, timeout=5)
        out = await drain(stream)
    finally:
        await upstream.aclose()

    assert server.received[0].json()["stream"] is True
    assert "stream_options" not in server.received[0].json()
    chunks = [ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: ")) for e in out]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls = [call for d in deltas for call in d.tool_calls or []]
    assert (calls[0].id, calls[0].function and calls[0].function.name) == ("toolu_9", "weather")
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert json.loads(arguments) == {"city": "Paris"} and {c.index for c in calls} == {0}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    usage_chunks = [c.usage for c in chunks if c.usage]
    assert len(usage_chunks) == int(app_wants_usage)
    if usage_chunks:
        assert (usage_chunks[0].prompt_tokens, usage_chunks[0].completion_tokens) == (230, 25)
    assert (stream.usage.prompt_tokens, stream.usage.cached_tokens, stream.usage.completion_tokens) == (230, 200, 25)


async def test_stream_error_event_raises(serve, backend) -> None:
    async def reply(received, res) -> None:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        start = b"".join(anthropic_stream()).split(b"\n\n")[0] + b"\n\n"
        await res.sse([start, f"event: error\ndata: {json.dumps(error)}\n\n".encode()])

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        stream = await upstream.stream({**REQUEST, "stream": True}, timeout=5)
        with pytest.raises(UpstreamError) as caught:
            async for _ in stream:
                pass
    finally:
        await upstream.aclose()
    assert caught.value.kind == "5xx" and "Overloaded" in caught.value.message


async def test_error_shape_is_translated_to_openai(serve, backend) -> None:
    async def reply(received, res) -> None:
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too big"}}
        await res.json(400, body)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()
    assert (caught.value.kind, caught.value.status) == ("4xx", 400)
    assert json.loads(caught.value.body_for("openai")) == {
        "error": {"message": "max_tokens: too big", "type": "invalid_request_error", "code": None}
    }


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}],
        [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
        [{"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}],
    ],
)
async def test_untranslatable_request_is_a_400_without_calling_upstream(serve, backend, content) -> None:
    async def reply(received, res) -> None:
        await res.json(200, MESSAGE)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.complete({"model": "chat", "messages": [{"role": "user", "content": content}]}, timeout=5)
    finally:
        await upstream.aclose()
    assert (caught.value.kind, caught.value.status) == ("4xx", 400)
    assert json.loads(caught.value.body_for("openai"))["error"]["type"] == "invalid_request_error"
    assert server.received == []


async def test_probe_lists_models_with_anthropic_headers(serve, backend, key) -> None:
    async def reply(received, res) -> None:
        await res.json(200, {"data": []})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider="anthropic"))
    try:
        assert await upstream.probe(timeout=5)
    finally:
        await upstream.aclose()
    seen = server.received[0]
    assert (seen.method, seen.target, seen.headers["x-api-key"]) == ("GET", "/models", key)
