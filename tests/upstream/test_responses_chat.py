"""Responses requests translated to chat completions and back, over real sockets, pinned by golden files.

Each file in golden/responses_chat holds the app's Responses `request`, the `chat_request` the upstream must
receive, what the upstream answers (`chat_answer` JSON or `chat_chunks` SSE) and what the app must get
(`answer`, or the stream's `events`). Both sides are checked against the providers' published specs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from llmroute.sidecar.upstream import Upstream, UpstreamError
from llmroute.sidecar.upstream.codecs import CODECS

from ..specs import responses_event_errors, spec_errors

GOLDEN = pathlib.Path(__file__).parent / "golden" / "responses_chat"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
CODEC = CODECS[("responses", "chat")]


def answer_errors(response: dict[str, Any]) -> list[str]:
    """spec_errors for a response object, but for one defect of the Open Responses spec: its echoed
    json_schema text format allows only a null `schema` (OpenAI echoes the schema the app sent)."""
    errors = spec_errors("responses", "ResponseResource", response)
    if response["text"]["format"]["type"] == "json_schema":
        errors = [e for e in errors if not e.startswith("text.format: ")]
    return errors


def golden(name: str) -> dict[str, Any]:
    return json.loads((GOLDEN / f"{name}.json").read_text())


def stamped(response: dict[str, Any]) -> dict[str, Any]:
    """`response` with its completion time (the clock's) replaced by a marker saying it was set."""
    if isinstance(response.get("completed_at"), int):
        return {**response, "completed_at": "<set>"}
    return response


def events_of(data: bytes) -> list[dict[str, Any]]:
    """The JSON of every `event:`/`data:` pair, checking that the two name the same type."""
    events = []
    for block in data.decode().split("\n\n"):
        if block:
            head, body = block.split("\n", 1)
            doc = json.loads(body.removeprefix("data: "))
            assert head == f"event: {doc['type']}"
            events.append(doc)
    return events


def pinned(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stream events as a golden file holds them: snapshot completion times stamped."""
    return [{**e, "response": stamped(e["response"])} if isinstance(e.get("response"), dict) else e for e in events]


def test_there_are_golden_files() -> None:
    assert {"text_and_image", "tool_round_trip", "incomplete", "stream_text", "stream_tool_call"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
async def test_golden_translation(name: str, serve, backend, events) -> None:
    case = golden(name)
    request = case["request"]
    assert spec_errors("responses", "CreateResponseBody", request) == []
    streamed = "chat_chunks" in case

    async def reply(received, res) -> None:
        if streamed:
            await res.sse(events(*case["chat_chunks"]))
        else:
            await res.json(200, case["chat_answer"])

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, model="up-model"))
    before = json.dumps(request)
    try:
        if streamed:
            stream = await upstream.stream(request, timeout=5, api="responses")
            data = b"".join([item async for item in stream])
            assert stream.complete
        else:
            completion = await upstream.complete(request, timeout=5, api="responses")
    finally:
        await upstream.aclose()

    assert json.dumps(request) == before, "the app's request must not be changed in place"
    sent = server.received[0]
    assert sent.target == "/chat/completions"
    assert sent.json() == case["chat_request"]
    assert spec_errors("openai", "CreateChatCompletionRequest", sent.json()) == []
    if streamed:
        got = events_of(data)
        for event in got:
            assert responses_event_errors(event) == [], event["type"]
        assert pinned(got) == case["events"]
        assert [e["sequence_number"] for e in got] == list(range(len(got)))
        final = got[-1]["response"]
    else:
        final = json.loads(completion.body)
        assert answer_errors(final) == []
        assert stamped(final) == case["answer"]
    usage = final["usage"]
    counted = completion.usage if not streamed else stream.usage
    assert (counted.prompt_tokens, counted.completion_tokens) == (usage["input_tokens"], usage["output_tokens"])
    assert counted.cached_tokens == usage["input_tokens_details"]["cached_tokens"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"store": True}, "store: true"),
        ({"background": True}, "background: true"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
        ({"tools": [{"type": "web_search"}]}, "tools of type 'web_search'"),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, "reasoning.summary"),
        ({"truncation": "auto"}, "truncation: auto"),
        ({"max_tool_calls": 3}, "max_tool_calls"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input items of type 'item_reference'"),
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input items of type 'reasoning'"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "'input_file'"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "file_id"),
    ],
)
def test_what_chat_cannot_carry_is_named(extra: dict[str, Any], named: str) -> None:
    request = {"model": "chat", "input": "hi", **extra}
    missing = CODEC.lacks(request)
    assert missing is not None and named in missing
    assert CODEC.lacks({"model": "chat", "input": "hi", "store": False, "truncation": "disabled"}) is None


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ({"model": "chat", "input": [{"type": "function_call_output", "output": "x"}]}, "call_id"),
        ({"model": "chat"}, "input is required"),  # fine natively with a stored prompt; nothing to send here
    ],
)
def test_a_malformed_request_is_a_400_not_a_filter(request_: dict[str, Any], named: str) -> None:
    assert CODEC.lacks(request_) is None
    with pytest.raises(UpstreamError) as caught:
        CODEC.encode(request_, "up", stream=False)
    assert caught.value.status == 400 and named in caught.value.message


async def test_a_chat_stream_cut_before_its_finish_is_never_a_complete_response(serve, backend, events) -> None:
    chunks = golden("stream_text")["chat_chunks"][:2]

    async def reply(received, res) -> None:
        await res.sse(events(*chunks))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        stream = await upstream.stream({"model": "chat", "input": "hi", "stream": True}, timeout=5, api="responses")
        data = b""
        with pytest.raises(UpstreamError, match="finish_reason"):
            async for item in stream:
                data += item
    finally:
        await upstream.aclose()
    assert not stream.complete
    assert b"response.completed" not in data
    assert stream.sequence == len(events_of(data))


async def test_a_garbled_chunk_mid_stream_is_skipped_and_counted(serve, backend, events) -> None:
    case = golden("stream_text")
    chunks = case["chat_chunks"]

    async def reply(received, res) -> None:
        await res.sse(events(*chunks[:2], "{not json", *chunks[2:]))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        stream = await upstream.stream(case["request"], timeout=5, api="responses")
        data = b"".join([item async for item in stream])
    finally:
        await upstream.aclose()
    assert stream.complete and stream.skipped == 1
    assert pinned(events_of(data)) == case["events"]


def test_an_empty_chat_answer_is_an_empty_message_and_a_refusal_a_refusal_part() -> None:
    request = {"model": "chat", "input": "hi"}
    for message, parts in (
        ({"content": ""}, [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}]),
        (
            {"content": None, "refusal": "I can't help with that."},
            [{"type": "refusal", "refusal": "I can't help with that."}],
        ),
    ):
        answer = {
            "id": "chatcmpl-e",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }
        response = json.loads(CODEC.decode(200, json.dumps(answer).encode(), "m", request).body)
        assert answer_errors(response) == []
        assert [item["content"] for item in response["output"]] == [parts]


async def test_a_streamed_refusal_is_a_refusal_part(serve, backend, events) -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [choice]}

    async def reply(received, res) -> None:
        await res.sse(
            events(
                chunk({"role": "assistant"}),
                chunk({"refusal": "I can't"}),
                chunk({"refusal": " help."}),
                chunk({}, "stop"),
                "[DONE]",
            )
        )

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        stream = await upstream.stream({"model": "chat", "input": "hi", "stream": True}, timeout=5, api="responses")
        got = events_of(b"".join([item async for item in stream]))
    finally:
        await upstream.aclose()
    assert all(responses_event_errors(event) == [] for event in got)
    assert [e["delta"] for e in got if e["type"] == "response.refusal.delta"] == ["I can't", " help."]
    assert got[-1]["response"]["output"][0]["content"] == [{"type": "refusal", "refusal": "I can't help."}]
