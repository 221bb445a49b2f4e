"""OpenAI-compatible and Azure OpenAI backends over real sockets: pass-through, auth headers, usage, streams."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmroute.sidecar.upstream import Upstream, UpstreamError

REQUEST: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "Hi"}],
    "max_tokens": 5,
}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up-model-2025",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 120,
        "completion_tokens": 7,
        "total_tokens": 127,
        "prompt_tokens_details": {"cached_tokens": 100},
    },
}


def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model-2025",
        "choices": choices,
        "usage": usage,
    }


STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({}, "stop"),
    {**chunk({}), "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}},
    "[DONE]",
]


async def test_complete_passes_body_through_with_upstream_model_and_bearer_key(serve, backend, key) -> None:
    async def reply(received, res) -> None:
        await res.json(200, ANSWER)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    request = {**REQUEST, "stream": False, "messages": list(REQUEST["messages"])}
    before = json.dumps(request)
    try:
        completion = await upstream.complete(request, timeout=5)
    finally:
        await upstream.aclose()

    seen = server.received[0]
    assert (seen.method, seen.target) == ("POST", "/chat/completions")
    assert seen.headers["authorization"] == f"Bearer {key}"
    assert seen.json() == {**REQUEST, "model": "up-model"}
    assert json.dumps(request) == before  # the caller's dict is untouched
    assert json.loads(completion.body) == ANSWER
    assert ChatCompletion.model_validate_json(completion.body).model == "up-model-2025"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (120, 7)
    assert completion.usage.cached_tokens == 100


async def test_calls_reuse_one_keep_alive_connection(serve, backend) -> None:
    async def reply(received, res) -> None:
        await res.json(200, ANSWER)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        for _ in range(3):
            await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()
    assert [r.connection for r in server.received] == [1, 1, 1]


async def test_no_key_means_no_authorization_header(serve, backend) -> None:
    async def reply(received, res) -> None:
        await res.json(200, ANSWER)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, key=None))
    try:
        await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()
    assert "authorization" not in server.received[0].headers


async def collect(upstream: Upstream, request: dict[str, Any], drain: Any) -> tuple[list[bytes], Any]:
    stream = await upstream.stream(request, timeout=5)
    try:
        return await drain(stream), stream.usage
    finally:
        await stream.aclose()


@pytest.mark.parametrize("app_wants_usage", [False, True])
async def test_stream_always_asks_usage_and_forwards_it_only_when_asked(
    serve, backend, events, drain, app_wants_usage: bool
) -> None:
    async def reply(received, res) -> None:
        await res.sse(events(*STREAM))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    request = {**REQUEST, "stream": True}
    if app_wants_usage:
        request["stream_options"] = {"include_usage": True}
    try:
        out, usage = await collect(upstream, request, drain)
    finally:
        await upstream.aclose()

    sent = server.received[0].json()
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert request.get("stream_options", {}).get("include_usage", False) is app_wants_usage
    chunks = [ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: ")) for e in out]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    assert [c.usage.total_tokens for c in chunks if c.usage] == ([11] if app_wants_usage else [])
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
    assert out[1] == events(STREAM[1])[0]  # forwarded byte for byte


async def test_stream_without_done_after_finish_is_complete(serve, backend, events, drain) -> None:
    async def reply(received, res) -> None:
        await res.sse(events(*STREAM[:4]))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        out, _ = await collect(upstream, {**REQUEST, "stream": True}, drain)
    finally:
        await upstream.aclose()
    assert out == events(*STREAM[:4])  # and complete: the app gets its [DONE] from the relay


@pytest.mark.parametrize(
    ("tail", "kind"),
    [
        (STREAM[:2], "reset"),  # clean EOF before the answer finished
        ([*STREAM[:2], {"error": {"message": "overloaded", "type": "server_error"}}], "5xx"),
        ([*STREAM[:2], "not json"], "reset"),  # a garbled event is skipped; the answer never finished
        ([], "5xx"),  # 200 with an empty stream
    ],
)
async def test_incomplete_or_failed_stream_raises_from_the_iterator(serve, backend, events, tail, kind) -> None:
    async def reply(received, res) -> None:
        await res.sse(events(*tail))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    got: list[bytes] = []
    try:
        stream = await upstream.stream({**REQUEST, "stream": True}, timeout=5)
        with pytest.raises(UpstreamError) as caught:
            async for event in stream:
                got.append(event)
    finally:
        await upstream.aclose()
    assert caught.value.kind == kind
    assert b"".join(got) == b"".join(events(*tail[:2]))  # the events before the failure reached the app


async def test_events_before_a_failure_in_the_same_read_reach_the_app_first(serve, backend, events) -> None:
    error = {"error": {"message": "overloaded", "type": "server_error"}}

    async def reply(received, res) -> None:
        await res.sse([b"".join(events(*STREAM[:3], error))])  # one network write

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        stream = await upstream.stream({**REQUEST, "stream": True}, timeout=5)
        assert await anext(stream) == b"".join(events(*STREAM[:3]))
        with pytest.raises(UpstreamError) as caught:
            await anext(stream)
    finally:
        await upstream.aclose()
    assert caught.value.kind == "5xx" and "overloaded" in caught.value.message


def compact(doc: dict[str, Any]) -> str:
    """As OpenAI sends events: no spaces, `"usage":null` in every chunk once usage is asked for."""
    return json.dumps({"usage": None, **doc}, separators=(",", ":"))


@pytest.mark.parametrize(
    "last",
    [
        {"error": {"message": "overloaded", "type": "server_error"}},
        {"error": {"message": "overloaded"}, "choices": [{"index": 0, "delta": {}, "finish_reason": None}]},
        "not json",
        '{"choices": [{"index": 0, "delta": {"content": "cut',
    ],
)
async def test_compact_events_are_checked_where_it_matters(serve, backend, events, drain, last: Any) -> None:
    """Plain deltas pass unparsed; usage, finish_reason and errors are still seen in OpenAI's own spelling."""
    stream_events = [compact(e) if isinstance(e, dict) else e for e in STREAM]

    async def reply(received, res) -> None:
        if received.json()["messages"][0]["content"] == "fail":
            await res.sse(events(*stream_events[:3], last if isinstance(last, str) else compact(last)))
        else:
            await res.sse(events(*stream_events))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        out, usage = await collect(upstream, {**REQUEST, "stream": True}, drain)
        unfinished = await upstream.stream({**REQUEST, "messages": [{"role": "user", "content": "fail"}]}, timeout=5)
        with pytest.raises(UpstreamError) as caught:
            async for _ in unfinished:
                pass
    finally:
        await upstream.aclose()
    assert out == events(*stream_events[:4])  # byte for byte, the usage-only chunk dropped, then complete
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
    # An error event fails the stream; a garbled one is skipped, and the stream, ending without its finish,
    # is cut short all the same.
    assert caught.value.kind == ("5xx" if isinstance(last, dict) else "reset")


async def test_azure_deployment_url_api_key_header_and_probe(serve, backend, events, drain, key) -> None:
    async def reply(received, res) -> None:
        if received.method == "GET":
            await res.json(200, {"data": []})
        elif received.json().get("stream"):
            await res.sse(events(*STREAM))
        else:
            await res.json(200, ANSWER)

    server = await serve(reply)
    b = backend(server.base_url, provider="azure-openai", model="my-deploy")
    upstream = Upstream(b)
    try:
        completion = await upstream.complete(REQUEST, timeout=5)
        out, usage = await collect(upstream, {**REQUEST, "stream": True}, drain)
        healthy = await upstream.probe(timeout=5)
    finally:
        await upstream.aclose()

    post, streamed, probe = server.received
    version = b.api_version
    assert post.target == f"/openai/deployments/my-deploy/chat/completions?api-version={version}"
    assert post.headers["api-key"] == key and "authorization" not in post.headers
    assert completion.usage.cached_tokens == 100
    assert streamed.json()["stream_options"] == {"include_usage": True}
    assert usage.completion_tokens == 2 and out == events(*STREAM[:4])
    assert (probe.method, probe.target, healthy) == ("GET", f"/openai/models?api-version={version}", True)


async def test_request_ids_and_rate_limit_headers_reach_the_app_on_answers_and_errors(serve, backend) -> None:
    upstream_headers = {
        "x-request-id": "req_123",
        "x-ratelimit-remaining-requests": "99",
        "openai-processing-ms": "12",
        "set-cookie": "session=abc",
    }
    status = iter([200, 400])

    async def reply(received, res) -> None:
        code = next(status)
        body = ANSWER if code == 200 else {"error": {"message": "bad", "type": "invalid_request_error"}}
        await res.json(code, body, upstream_headers)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        completion = await upstream.complete(REQUEST, timeout=5)
        with pytest.raises(UpstreamError) as caught:
            await upstream.complete(REQUEST, timeout=5)
    finally:
        await upstream.aclose()
    expected = [("x-request-id", "req_123"), ("x-ratelimit-remaining-requests", "99"), ("openai-processing-ms", "12")]
    assert completion.headers == expected  # never the upstream's cookies
    assert caught.value.headers == expected


async def test_a_finished_stream_whose_done_never_comes_is_finalised_at_once(serve, backend, events, drain) -> None:
    # Finish and usage arrived, then the upstream neither sends [DONE] nor closes: the answer is complete,
    # so it ends within the short grace instead of waiting out the 30 s idle bound or failing.
    async def reply(received, res) -> None:
        res.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b"".join(events(*STREAM[:-1]))
        res.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        await res.writer.drain()
        await res.hang()

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    started = asyncio.get_running_loop().time()
    try:
        out, usage = await collect(upstream, {**REQUEST, "stream": True}, drain)
    finally:
        await upstream.aclose()
    assert asyncio.get_running_loop().time() - started < 10  # the grace is 0.5 s; the idle bound 30 s
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)
    assert len(out) == len(STREAM) - 2  # every event but the usage-only chunk (not asked for) and [DONE]


async def test_a_garbled_event_in_a_stream_that_goes_on_is_skipped_and_counted(serve, backend, events, drain) -> None:
    async def reply(received, res) -> None:
        await res.sse(events(*STREAM[:2], "{not json", *STREAM[2:]))

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        stream = await upstream.stream({**REQUEST, "stream": True}, timeout=5)
        out = await drain(stream)
    finally:
        await upstream.aclose()
    assert out == events(*STREAM[:4])  # the whole answer, without the garbled event
    assert stream.skipped == 1 and stream.complete
