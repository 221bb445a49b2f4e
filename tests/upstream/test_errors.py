"""Every way a backend call fails, classified from what really happens on the socket; keys never leak."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest

from llmroute.sidecar.upstream import Upstream, UpstreamError
from llmroute.sidecar.upstream import client as client_module
from llmroute.sidecar.upstream.errors import mask
from tests.ports import free_port

REQUEST: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}]}
STREAM_REQUEST = {**REQUEST, "stream": True}


async def fail(upstream: Upstream, streaming: bool, bound: float = 5) -> UpstreamError:
    """The UpstreamError of one call (streams are read to the end)."""
    with pytest.raises(UpstreamError) as caught:
        if streaming:
            stream = await upstream.stream(STREAM_REQUEST, timeout=bound)
            try:
                async for _ in stream:
                    pass
            finally:
                await stream.aclose()
        else:
            await upstream.complete(REQUEST, timeout=bound)
    return caught.value


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused_is_connect_failure(backend, streaming: bool) -> None:
    upstream = Upstream(backend(f"http://127.0.0.1:{free_port()}"))
    try:
        error = await fail(upstream, streaming)
    finally:
        await upstream.aclose()
    assert (error.kind, error.status) == ("connect-failure", None)


@pytest.mark.parametrize("streaming", [False, True])
async def test_reset_before_answer_is_reset(serve, backend, streaming: bool) -> None:
    async def reply(received, res) -> None:
        await res.reset()

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming)
    finally:
        await upstream.aclose()
    assert error.kind == "reset"


@pytest.mark.parametrize("streaming", [False, True])
async def test_hang_is_timeout_within_the_bound(serve, backend, streaming: bool) -> None:
    async def reply(received, res) -> None:
        await res.hang()

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    started = time.monotonic()
    try:
        error = await fail(upstream, streaming, bound=0.2)
    finally:
        await upstream.aclose()
    assert error.kind == "timeout"
    assert time.monotonic() - started < 1.5


async def test_stream_that_stalls_after_headers_hits_the_idle_timeout(serve, backend, events, monkeypatch) -> None:
    monkeypatch.setattr(client_module, "MIN_IDLE_TIMEOUT", 0.3)

    async def reply(received, res) -> None:
        first = events(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
            }
        )
        await res.sse(first, complete=False, pause=10)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    got: list[bytes] = []
    try:
        stream = await upstream.stream(STREAM_REQUEST, timeout=0.1)
        with pytest.raises(UpstreamError) as caught:
            async for event in stream:
                got.append(event)
    finally:
        await upstream.aclose()
    assert caught.value.kind == "timeout" and len(got) == 1


async def test_reset_mid_stream_raises_from_the_iterator(serve, backend, events) -> None:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}],
    }

    async def reply(received, res) -> None:
        await res.sse(events(chunk, chunk), complete=False, pause=0.05)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    got: list[bytes] = []
    try:
        stream = await upstream.stream(STREAM_REQUEST, timeout=5)
        with pytest.raises(UpstreamError) as caught:
            async for event in stream:
                got.append(event)
    finally:
        await upstream.aclose()
    assert caught.value.kind == "reset" and len(got) == 2


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(
    ("status", "headers", "kind", "retry_after"),
    [
        (500, {}, "5xx", None),
        (502, {}, "5xx", None),
        (503, {"retry-after": "3"}, "5xx", 3.0),
        (429, {"retry-after": "7"}, "429", 7.0),
        (429, {"retry-after-ms": "1500"}, "429", 1.5),
        (429, {}, "429", None),
        (401, {}, "auth", None),
        (403, {}, "auth", None),
        (404, {}, "4xx", None),
    ],
)
async def test_status_classification(serve, backend, streaming, status, headers, kind, retry_after) -> None:
    async def reply(received, res) -> None:
        await res.json(status, {"error": {"message": f"nope {status}", "type": "x", "code": None}}, headers)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming)
    finally:
        await upstream.aclose()
    assert (error.kind, error.status, error.retry_after) == (kind, status, retry_after)
    assert f"nope {status}" in str(error)


async def test_retry_after_http_date(serve, backend) -> None:
    async def reply(received, res) -> None:
        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        await res.json(429, {"error": {"message": "slow down"}}, {"retry-after": when})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming=False)
    finally:
        await upstream.aclose()
    assert error.kind == "429" and error.retry_after is not None and 27 <= error.retry_after <= 30


async def test_400_body_is_kept_in_openai_shape(serve, backend) -> None:
    upstream_error = {
        "error": {
            "message": "bad temperature",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }

    async def reply(received, res) -> None:
        await res.json(400, upstream_error)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming=False)
    finally:
        await upstream.aclose()
    assert (error.kind, error.status) == ("4xx", 400)
    assert json.loads(error.body_for("openai")) == upstream_error


async def test_non_json_error_body_becomes_an_openai_error(serve, backend) -> None:
    async def reply(received, res) -> None:
        await res.send(502, b"<html>Bad Gateway</html>", {"content-type": "text/html"})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming=False)
    finally:
        await upstream.aclose()
    assert error.kind == "5xx"
    assert json.loads(error.body_for("openai")) == {
        "error": {"message": "<html>Bad Gateway</html>", "type": "api_error", "code": None}
    }


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"id": "x"}'])
async def test_unusable_2xx_body_fails_like_a_server_error(serve, backend, body: bytes) -> None:
    async def reply(received, res) -> None:
        await res.send(200, body)

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming=False)
    finally:
        await upstream.aclose()
    assert error.kind == "5xx" and "unusable body" in error.message


@pytest.mark.parametrize("provider", ["openai", "azure-openai", "anthropic"])
async def test_key_echoed_by_upstream_never_leaks(serve, backend, key, provider: str) -> None:
    async def reply(received, res) -> None:
        await res.json(401, {"error": {"message": f"Incorrect API key provided: {key}", "type": "auth"}})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url, provider=provider))
    try:
        error = await fail(upstream, streaming=False)
        stream_error = await fail(upstream, streaming=True)
    finally:
        await upstream.aclose()
    assert error.kind == stream_error.kind == "auth"
    for shown in (
        str(error),
        repr(error),
        str(stream_error),
        repr(upstream),
        repr(upstream.backend),
        repr(error.args),
        error.body_for("openai").decode(),
    ):
        assert key not in shown
    assert "Incorrect API key provided: ***" in error.message


async def test_a_key_cut_by_the_message_limit_is_masked_too(serve, backend, key) -> None:
    """A message is cut to 300 characters: when the cut falls inside an echoed key, its first part is masked."""
    lead = "Refused: the key is not valid for this project."

    async def reply(received, res) -> None:
        await res.json(401, {"error": {"message": f"{lead:<{300 - 8}}{key} and more", "type": "auth"}})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        error = await fail(upstream, streaming=False)
    finally:
        await upstream.aclose()
    assert error.message.endswith(f"{lead:<{300 - 8}}***")
    assert key[:8] not in error.message
    assert mask(f"{lead} {key[:3]}", key) == f"{lead} {key[:3]}"  # three characters say nothing of the key


async def test_successful_results_do_not_show_the_key(serve, backend, key, events) -> None:
    async def reply(received, res) -> None:
        if json.loads(received.body).get("stream"):
            await res.sse(events("[DONE]"))
        else:
            await res.json(200, {"choices": [], "usage": None})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    try:
        completion = await upstream.complete(REQUEST, timeout=5)
        stream = await upstream.stream(STREAM_REQUEST, timeout=5)
        shown = [repr(completion), repr(stream), repr(upstream)]
        await stream.aclose()
    finally:
        await upstream.aclose()
    assert all(key not in s for s in shown)


async def test_probe_gets_models_and_reports_health(serve, backend, key) -> None:
    statuses = [200, 500]

    async def reply(received, res) -> None:
        await res.json(statuses.pop(0), {"data": []})

    server = await serve(reply)
    upstream = Upstream(backend(server.base_url))
    refused = Upstream(backend(f"http://127.0.0.1:{free_port()}"))
    try:
        assert await upstream.probe(timeout=5) is True
        assert await upstream.probe(timeout=5) is False
        assert await refused.probe(timeout=5) is False
    finally:
        await upstream.aclose()
        await refused.aclose()
    assert [(r.method, r.target) for r in server.received] == [("GET", "/models")] * 2
    assert server.received[0].headers["authorization"] == f"Bearer {key}"
    assert server.received[0].body == b""
