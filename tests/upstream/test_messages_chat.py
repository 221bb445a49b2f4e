"""Anthropic Messages in, OpenAI chat completions upstream: each direction pinned by golden files
(tests/upstream/golden/messages_chat/*.json), both sides valid against the providers' published specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmroute.sidecar.upstream import UpstreamError
from llmroute.sidecar.upstream.base import DONE
from llmroute.sidecar.upstream.messages_chat import MESSAGES_TO_CHAT
from llmroute.sidecar.upstream.sse import SSEEvent

from ..specs import spec_errors

GOLDEN = sorted((Path(__file__).parent / "golden" / "messages_chat").glob("*.json"))
MODEL = "gpt-4.1"


def _case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    return case


def _feed(request: dict[str, Any], chunks: list[Any]) -> tuple[list[Any], Any]:
    """The Messages events (and the marker "DONE") a translator makes of these chat chunks, and its usage."""
    translator = MESSAGES_TO_CHAT.translator(request, MODEL)
    out: list[bytes] = []
    for chunk in chunks:
        data = chunk if isinstance(chunk, str) else json.dumps(chunk)
        out.extend(translator.event(SSEEvent("message", data.encode())))
    out.extend(translator.end())
    events: list[Any] = []
    for raw in out:
        if raw == DONE:
            events.append("DONE")
            continue
        name, data = raw.decode().rstrip("\n").split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        events.append({"event": name[7:], "data": json.loads(data[6:])})
    return events, translator.usage


@pytest.mark.parametrize("path", GOLDEN, ids=[p.stem for p in GOLDEN])
def test_request_translation(path: Path) -> None:
    case = _case(path)
    request = case["request"]["messages"]
    assert spec_errors("anthropic", "CreateMessageParams", request) == []
    assert MESSAGES_TO_CHAT.lacks(request) is None
    body = json.loads(MESSAGES_TO_CHAT.encode(request, MODEL, stream=bool(request.get("stream"))))
    assert body == case["request"]["chat"]
    assert spec_errors("openai", "CreateChatCompletionRequest", body) == []


@pytest.mark.parametrize("path", [p for p in GOLDEN if "response" in _case(p)], ids=lambda p: p.stem)
def test_answer_translation(path: Path) -> None:
    case = _case(path)
    chat = case["response"]["chat"]
    assert spec_errors("openai", "CreateChatCompletionResponse", chat) == []
    completion = MESSAGES_TO_CHAT.decode(200, json.dumps(chat).encode(), MODEL, case["request"]["messages"])
    answer = json.loads(completion.body)
    assert answer == case["response"]["messages"]
    assert spec_errors("anthropic", "Message", answer) == []
    usage = chat["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    # Chat's prompt_tokens include cache reads; Anthropic's input_tokens do not. Cost reads the chat counts.
    assert answer["usage"]["input_tokens"] + answer["usage"]["cache_read_input_tokens"] == usage["prompt_tokens"]
    assert (completion.usage.prompt_tokens, completion.usage.cached_tokens) == (usage["prompt_tokens"], cached)
    assert completion.usage.completion_tokens == usage["completion_tokens"] == answer["usage"]["output_tokens"]


@pytest.mark.parametrize("path", [p for p in GOLDEN if "stream" in _case(p)], ids=lambda p: p.stem)
def test_stream_translation(path: Path) -> None:
    case = _case(path)
    events, usage = _feed(case["request"]["messages"], case["stream"]["chat"])
    assert events == case["stream"]["messages"]
    assert events[-1] == "DONE" and events[-2]["event"] == "message_stop"
    for item in events[:-1]:
        assert item["event"] == item["data"]["type"]
        assert spec_errors("anthropic", "MessageStreamEvent", item["data"]) == []
    expected = case["stream"]["usage"]
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
        expected["cached_tokens"],
    )


def _request(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **extra}


def _blocks(role: str, *blocks: dict[str, Any]) -> dict[str, Any]:
    history = [{"role": "user", "content": "hi"}] if role == "assistant" else []
    return _request(messages=[*history, {"role": role, "content": list(blocks)}, {"role": "user", "content": "go"}])


@pytest.mark.parametrize(
    ("request_body", "named"),
    [
        (_request(thinking={"type": "enabled", "budget_tokens": 1024}), "thinking"),
        (_request(top_k=5), "top_k"),
        (_request(container="c-1"), "container"),
        (_request(output_config={"effort": "low"}), "output_config"),
        (_request(some_future_field=1), "some_future_field"),
        (_request(service_tier="standard_only"), "service_tier"),
        (_request(stop_sequences=["a", "b", "c", "d", "e"]), "more than 4 stop_sequences"),
        (_request(tools=[{"type": "web_search_20250305", "name": "web_search"}]), "server tools"),
        (_request(tools=[{"name": "t", "input_schema": {"type": "object"}, "defer_loading": True}]), "defer_loading"),
        (_blocks("assistant", {"type": "thinking", "thinking": "hm", "signature": "sig"}), "'thinking' content"),
        (_blocks("assistant", {"type": "redacted_thinking", "data": "xx"}), "'redacted_thinking' content"),
        (
            _blocks("user", {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "d"}}),
            "'document' content",
        ),
        (_blocks("user", {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}), "is_error"),
        (_blocks("user", {"type": "image", "source": {"type": "file", "file_id": "file_1"}}), "'file' source"),
        (
            _blocks(
                "user",
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}],
                },
            ),
            "tool_result content other than text",
        ),
        (
            _request(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "The answer is"}]),
            "prefill",
        ),
    ],
)
def test_what_chat_cannot_carry_is_named_not_dropped(request_body: dict[str, Any], named: str) -> None:
    missing = MESSAGES_TO_CHAT.lacks(request_body)
    assert missing is not None and named in missing


def test_stream_is_settled_once_finish_and_usage_are_in() -> None:
    case = _case(GOLDEN[0].with_name("stream_text.json"))
    translator = MESSAGES_TO_CHAT.translator(case["request"]["messages"], MODEL)
    *body, usage, done = case["stream"]["chat"]
    for chunk in body:
        translator.event(SSEEvent("message", json.dumps(chunk).encode()))
        assert not translator.settled  # the finish is in, but not the usage
    translator.event(SSEEvent("message", json.dumps(usage).encode()))
    assert translator.settled and done == "[DONE]"
    closing = translator.end()  # [DONE] never came: the answer is finalised with its usage
    assert closing[-1] == DONE and b"message_stop" in closing[-2]


def test_a_garbled_chunk_is_fatal_first_and_skipped_later() -> None:
    first = MESSAGES_TO_CHAT.translator(_request(), MODEL)
    with pytest.raises(UpstreamError, match="not a JSON object"):
        first.event(SSEEvent("message", b"{garbled"))
    case = _case(GOLDEN[0].with_name("stream_text.json"))
    chunks = case["stream"]["chat"]
    events, _ = _feed(case["request"]["messages"], [chunks[0], "{garbled", *chunks[1:]])
    assert events == case["stream"]["messages"]


def test_stream_cut_short_before_the_finish_is_an_error() -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    }
    translator = MESSAGES_TO_CHAT.translator(_request(), MODEL)
    assert translator.event(SSEEvent("message", json.dumps(chunk).encode()))
    with pytest.raises(UpstreamError, match="finish_reason"):
        translator.end()


def test_error_chunk_mid_stream_raises() -> None:
    translator = MESSAGES_TO_CHAT.translator(_request(), MODEL)
    error = {"error": {"message": "overloaded", "type": "server_error"}}
    with pytest.raises(UpstreamError, match="overloaded"):
        translator.event(SSEEvent("message", json.dumps(error).encode()))
