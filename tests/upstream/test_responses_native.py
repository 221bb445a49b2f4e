"""Responses requests to a backend that serves the Responses API: the body passes through, the stream's end,
usage and failures are read from its named events."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.upstream import Upstream, UpstreamError

REQUEST: dict[str, Any] = {
    "model": "chat",
    "input": "hi",
    "stream": True,
    "previous_response_id": "resp_0",
    "tools": [{"type": "web_search"}],
}
USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3}


def named(*docs: dict[str, Any]) -> list[bytes]:
    """Responses SSE events, numbered as OpenAI numbers them."""
    return [
        f"event: {doc['type']}\ndata: {json.dumps({**doc, 'sequence_number': n})}\n\n".encode()
        for n, doc in enumerate(docs)
    ]


START = ({"type": "response.created", "response": {"id": "resp_1", "usage": None}},)
DELTA = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0, "delta": "x"}


async def run(serve, backend, pieces: list[bytes]) -> tuple[Any, bytes, list[Any]]:
    async def reply(received, res) -> None:
        await res.sse(pieces)

    server = await serve(reply)
    upstream = Upstream(dataclasses.replace(backend(server.base_url, model="up"), apis=frozenset({"responses"})))
    data = b""
    try:
        stream = await upstream.stream(REQUEST, timeout=5, api="responses")
        async for item in stream:
            data += item
    finally:
        await upstream.aclose()
    return stream, data, server.received


@pytest.mark.parametrize("end", ["response.completed", "response.incomplete"])
async def test_body_passes_through_and_the_end_carries_usage(serve, backend, end: str) -> None:
    finish = {"type": end, "response": {"id": "resp_1", "usage": USAGE}}
    stream, data, received = await run(serve, backend, named(*START, DELTA, finish))
    assert received[0].target == "/responses"
    assert received[0].json() == {**REQUEST, "model": "up"}  # unknown to chat, natural here
    assert stream.complete and data.count(b"event: ") == 3 and f"event: {end}".encode() in data
    assert (stream.usage.prompt_tokens, stream.usage.cached_tokens, stream.usage.completion_tokens) == (12, 4, 3)
    assert stream.sequence == 3


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        ({"type": "error", "error": {"type": "server_error", "code": "server_error", "message": "boom"}}, None),
        ({"type": "error", "code": "rate_limit_exceeded", "message": "slow down", "param": None}, "rate"),
        ({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}}, None),
    ],
)
async def test_error_events_and_failed_responses_are_failures(serve, backend, failure, kind) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run(serve, backend, named(*START, DELTA, failure))
    expected = FailureKind.RATE_LIMITED if kind == "rate" else FailureKind.SERVER_ERROR
    assert caught.value.kind == expected
    assert failure.get("message", "boom") in caught.value.message


async def test_a_cut_stream_is_never_a_complete_answer(serve, backend) -> None:
    with pytest.raises(UpstreamError) as caught:
        await run(serve, backend, named(*START, DELTA))
    assert caught.value.kind == FailureKind.RESET
