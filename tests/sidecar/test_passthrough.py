"""Passthrough through a running sidecar, with the official SDKs as clients and real HTTP servers on loopback
as the passthrough upstream and the route's backend: what the upstream receives, and what the app gets."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llmroute.sidecar.main import Sidecar
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.passthrough import Passthrough, PassthroughPolicy, parse_upstreams
from tests.upstream.conftest import RawServer, Received, Reply, Responder

from .harness import sidecar_for

APP_KEY = "sk-app-OWN-0123456789"
ROUTE_KEY = "sk-route-SECRET-9876543210"
CHAT_ANSWER = {
    "id": "chatcmpl-up",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-unrouted",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "from upstream"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
MESSAGE_ANSWER = {
    "id": "msg_up",
    "type": "message",
    "role": "assistant",
    "model": "claude-unrouted",
    "content": [{"type": "text", "text": "from anthropic upstream"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 4},
}
USER: list[Any] = [{"role": "user", "content": "hello"}]


async def answer(received: Received, responder: Responder) -> None:
    """The upstream's answer: a message on Anthropic's path, a chat completion elsewhere."""
    doc = MESSAGE_ANSWER if received.target.startswith("/v1/messages") else CHAT_ANSWER
    await responder.json(200, doc, {"x-request-id": "req-upstream-1"})


@dataclass
class Setup:
    """A sidecar routing model `chat` to `backend` (with the route's key), passing the rest to `upstream`."""

    sidecar: Sidecar
    upstream: RawServer
    backend: RawServer
    sent: list[bytes] = field(default_factory=list)
    """Request bodies as the app's SDK sent them (from an httpx hook), for byte-for-byte comparison."""
    claudes: list[anthropic.AsyncAnthropic] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.app_server.port}"

    def openai(self, **kwargs: Any) -> openai.AsyncOpenAI:
        async def record(request: httpx.Request) -> None:
            self.sent.append(await request.aread())  # multipart bodies are streams until read

        http = httpx.AsyncClient(event_hooks={"request": [record]})
        return openai.AsyncOpenAI(
            base_url=f"{self.base_url}/v1", api_key=APP_KEY, max_retries=0, http_client=http, **kwargs
        )

    def anthropic(self) -> anthropic.AsyncAnthropic:
        """The Anthropic SDK (its base URL has no /v1). This SDK version sends `api_key` as Authorization;
        older ones and Claude Code send x-api-key: the app sends both, and both must pass as they are."""
        headers = {"x-api-key": APP_KEY}
        client = anthropic.AsyncAnthropic(
            base_url=self.base_url, api_key=APP_KEY, max_retries=0, default_headers=headers
        )
        self.claudes.append(client)
        return client


@contextlib.asynccontextmanager
async def setup(
    tmp_path: Path,
    reply: Reply = answer,
    *,
    passthrough: str | None = None,
    upstream_port: int | None = None,
    provider: str = "openai",
    extra: tuple[str, ...] = (),
) -> AsyncIterator[Setup]:
    upstream = await RawServer(reply).start()
    backend = await RawServer(answer).start()
    secrets = tmp_path / "secrets" / "keys"
    secrets.mkdir(parents=True)
    (secrets / "route").write_text(ROUTE_KEY)
    spec = {
        "models": ["chat"],
        "backends": [
            {
                "name": "routed",
                "provider": provider,
                "url": f"{backend.base_url}/v1",
                "model": "routed-model",
                "apiKeySecretRef": {"name": "keys", "key": "route"},
            }
        ],
    }
    origin = f"http://127.0.0.1:{upstream_port or upstream.port}"
    argv = ["--secrets-dir", str(tmp_path / "secrets"), *extra]
    argv += ["--passthrough", passthrough or f"openai={origin}/v1,anthropic={origin}"]
    try:
        async with sidecar_for(tmp_path, spec, argv) as sidecar:
            done = Setup(sidecar, upstream, backend)
            try:
                yield done
            finally:
                for client in done.claudes:
                    await client.close()
    finally:
        await upstream.stop()
        await backend.stop()


def head_text(received: Received) -> str:
    return json.dumps(received.headers) + received.target


async def test_unknown_model_passes_through_unchanged_with_the_apps_own_key(tmp_path: Path) -> None:
    async with setup(tmp_path) as s, s.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-unrouted", messages=USER, extra_query={"api-version": "a b"}, extra_headers={"x-app": "1"}
        )
        assert raw.parse().choices[0].message.content == "from upstream"
        assert raw.status_code == 200 and raw.headers["x-request-id"] == "req-upstream-1"
        assert "x-llmroute-route" not in raw.headers  # not routed: nothing of ours is added
        [got] = s.upstream.received
        assert got.method == "POST" and got.target == "/v1/chat/completions?api-version=a+b"
        assert got.body == s.sent[-1]  # byte for byte what the SDK sent
        assert got.headers["authorization"] == f"Bearer {APP_KEY}"
        assert got.headers["host"] == f"127.0.0.1:{s.upstream.port}"
        assert got.headers["x-app"] == "1" and got.headers["user-agent"].startswith("AsyncOpenAI/Python")
        assert ROUTE_KEY not in head_text(got)
        assert not s.backend.received


async def test_routed_model_never_forwards_the_apps_key(tmp_path: Path) -> None:
    async with setup(tmp_path) as s, s.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(model="chat", messages=USER)
        assert raw.headers["x-llmroute-route"] == "chat"
        [got] = s.backend.received
        assert got.headers["authorization"] == f"Bearer {ROUTE_KEY}"
        assert APP_KEY not in head_text(got) and APP_KEY not in got.body.decode()
        assert not s.upstream.received
    async with setup(tmp_path / "anthropic", provider="anthropic") as s:
        claude = s.anthropic()
        await claude.messages.create(model="chat", max_tokens=10, messages=USER)
        [got] = s.backend.received
        assert got.headers["x-api-key"] == ROUTE_KEY and "authorization" not in got.headers
        assert APP_KEY not in head_text(got)
        assert not s.upstream.received


async def test_moderations_pass_through(tmp_path: Path) -> None:
    async def moderation(received: Received, responder: Responder) -> None:
        result = {"flagged": False, "categories": {}, "category_scores": {}}
        await responder.json(200, {"id": "modr-1", "model": "omni-moderation-latest", "results": [result]})

    async with setup(tmp_path, moderation) as s, s.openai() as client:
        answer = await client.moderations.create(input="is this fine?")
        assert answer.id == "modr-1" and answer.results[0].flagged is False
        [got] = s.upstream.received
        assert got.target == "/v1/moderations" and got.headers["authorization"] == f"Bearer {APP_KEY}"
        assert json.loads(got.body) == {"input": "is this fine?"}


async def test_a_streamed_answer_arrives_chunk_by_chunk(tmp_path: Path) -> None:
    release = asyncio.Event()

    def event(text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
        delta = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "x", "choices": [choice]}
        return f"data: {json.dumps(delta)}\n\n".encode()

    async def stream(received: Received, responder: Responder) -> None:
        writer = responder.writer
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        first = event("first")
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        await release.wait()  # the second piece only after the app has read the first
        rest = event("second") + b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        await writer.drain()

    async with setup(tmp_path, stream) as s, s.openai() as client:
        chunks = await client.chat.completions.create(model="gpt-unrouted", messages=USER, stream=True)
        # Wide margin: if the sidecar buffered, the first chunk would never come while the upstream waits.
        first = await asyncio.wait_for(anext(chunks), 30)
        assert first.choices[0].delta.content == "first"
        release.set()
        assert [c.choices[0].delta.content async for c in chunks] == ["second"]
        assert s.upstream.received[0].headers["authorization"] == f"Bearer {APP_KEY}"


async def test_anthropic_sdk_unknown_model_passes_through_with_x_api_key(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        client = s.anthropic()
        message = await client.messages.create(model="claude-unrouted", max_tokens=10, messages=USER)
        assert message.content[0].text == "from anthropic upstream"  # type: ignore[union-attr]
        await client.messages.count_tokens(model="claude-unrouted", messages=USER)
        # An Anthropic call to a path the sidecar does not serve goes to Anthropic too (anthropic-version).
        await client.models.retrieve("claude-unrouted")  # the canned answer is no model: parsed loosely
        paths = [got.target for got in s.upstream.received]
        assert paths == ["/v1/messages", "/v1/messages/count_tokens", "/v1/models/claude-unrouted"]
        for got in s.upstream.received:
            assert got.headers["x-api-key"] == APP_KEY and got.headers["authorization"] == f"Bearer {APP_KEY}"
            assert "anthropic-version" in got.headers
            assert ROUTE_KEY not in head_text(got)


async def test_hop_by_hop_headers_are_not_forwarded_either_way(tmp_path: Path) -> None:
    async def reply(received: Received, responder: Responder) -> None:
        hop = {"connection": "x-resp-hop", "x-resp-hop": "1", "keep-alive": "timeout=5", "proxy-authenticate": "B"}
        await responder.json(418, {"error": {"message": "teapot"}}, {**hop, "x-resp-kept": "yes"})

    sent = {
        "connection": "keep-alive, x-req-hop",
        "x-req-hop": "1",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "trailer": "x-checksum",
        "upgrade": "websocket",
        "proxy-authorization": "Basic cHJveHk6cHc=",
        "x-llmroute-priority": "batch",
        "x-req-kept": "yes",
        "authorization": f"Bearer {APP_KEY}",
    }
    async with setup(tmp_path, reply) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        response = await http.get("/v1/files/file%2Dab%20c/content", params={"q": "1"}, headers=sent)
        assert response.status_code == 418 and response.json() == {"error": {"message": "teapot"}}
        assert response.headers["x-resp-kept"] == "yes"
        for name in ("x-resp-hop", "keep-alive", "proxy-authenticate"):
            assert name not in response.headers
        [got] = s.upstream.received
        assert got.target == "/v1/files/file%2Dab%20c/content?q=1"  # the path as sent, not decoded
        assert got.headers["x-req-kept"] == "yes" and got.headers["authorization"] == f"Bearer {APP_KEY}"
        for name in ("x-req-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"):
            assert name not in got.headers
        assert "x-llmroute-priority" not in got.headers and got.headers.get("connection") is None


async def test_upstream_errors_come_back_as_the_upstream_wrote_them(tmp_path: Path) -> None:
    async def reply(received: Received, responder: Responder) -> None:
        error = {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
        await responder.json(401, error, {"x-request-id": "req-401"})

    async with setup(tmp_path, reply) as s, s.openai() as client:
        with pytest.raises(openai.AuthenticationError) as info:
            await client.embeddings.create(model="text-embedding-unrouted", input="x")
        assert "Incorrect API key provided" in info.value.message and info.value.request_id == "req-401"


async def test_passthrough_off_keeps_the_404s(tmp_path: Path) -> None:
    async with setup(tmp_path, passthrough="off") as s, s.openai() as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-unrouted", messages=USER)
        assert "'gpt-unrouted' is not routed here; models: chat" in info.value.message
        with pytest.raises(openai.NotFoundError) as info:
            await client.moderations.create(input="x")
        assert "no such endpoint: POST /v1/moderations" in info.value.message
        with pytest.raises(anthropic.NotFoundError) as anthropic_info:
            await s.anthropic().messages.create(model="claude-unrouted", max_tokens=5, messages=USER)
        assert "not routed here" in anthropic_info.value.message
        assert not s.upstream.received


async def test_an_upstream_that_is_down_is_a_502_in_the_apis_shape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    caplog.set_level(logging.DEBUG)
    async with setup(tmp_path, upstream_port=closed_port) as s, s.openai() as client:
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-unrouted", messages=USER)
        assert info.value.status_code == 502
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "upstream_unavailable"
        assert f"127.0.0.1:{closed_port}" in body["message"]
        with pytest.raises(anthropic.APIStatusError) as anthropic_info:
            await s.anthropic().messages.create(model="claude-unrouted", max_tokens=5, messages=USER)
        assert anthropic_info.value.status_code == 502
        error = anthropic_info.value.body
        assert isinstance(error, dict) and error["type"] == "error" and error["error"]["type"] == "api_error"
        assert error["error"]["message"].startswith(f"passthrough upstream 127.0.0.1:{closed_port} failed")
    assert "passthrough to" in caplog.text and APP_KEY not in caplog.text


async def test_passthrough_is_counted_and_never_shows_a_credential(tmp_path: Path) -> None:
    async with setup(tmp_path) as s, s.openai() as client:
        await client.chat.completions.create(model="gpt-unrouted", messages=USER)
        await client.moderations.create(input="x")  # the same canned answer: parsed loosely, counted all the same
        admin = f"http://127.0.0.1:{s.sidecar.admin_server.port}"
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{admin}/metrics")).text
            routes = (await http.get(f"{admin}/debug/routes")).text
        for api in ("chat", "other"):  # moderations are not in the inbound table
            labels = f'api="{api}",backend="openai",outcome="success",priority="none",route="passthrough"'
            assert f"llmroute_request_duration_seconds_count{{{labels}}} 1.0" in text
        assert 'llmroute_passthrough_requests_total{family="openai",status="200"} 2.0' in text
        assert 'llmroute_requests_in_flight{route="passthrough"} 0.0' in text
        for secret in (APP_KEY, ROUTE_KEY):
            assert secret not in text and secret not in routes


async def test_a_denying_policy_answers_403_in_the_apis_shape(tmp_path: Path) -> None:
    async with setup(tmp_path) as s, s.openai() as client:
        assert s.sidecar.passthrough is not None
        s.sidecar.passthrough.policy = PassthroughPolicy(allow=False, source="LLMPolicy default/strict")
        with pytest.raises(openai.PermissionDeniedError) as info:
            await client.chat.completions.create(model="gpt-unrouted", messages=USER)
        assert "denied by LLMPolicy default/strict" in info.value.message
        with pytest.raises(anthropic.PermissionDeniedError):
            await s.anthropic().messages.create(model="claude-unrouted", max_tokens=5, messages=USER)
        assert not s.upstream.received
        await client.chat.completions.create(model="chat", messages=USER)  # routed models are not affected


async def test_an_answer_the_upstream_breaks_off_is_broken_off_for_the_app(tmp_path: Path) -> None:
    async def reply(received: Received, responder: Responder) -> None:
        await responder.sse([b"data: {}\n\n"], complete=False)

    async with setup(tmp_path, reply) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        async with http.stream("POST", "/v1/chat/completions", json={"model": "x", "nonsense": True}) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # not a complete-looking answer
                await response.aread()
        text = (await http.get(f"http://127.0.0.1:{s.sidecar.admin_server.port}/metrics")).text
        assert 'api="chat",backend="openai",outcome="error",priority="none",route="passthrough"} 1.0' in text


async def test_other_methods_are_relayed_but_head_is_refused(tmp_path: Path) -> None:
    async with setup(tmp_path) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        response = await http.request("DELETE", "/v1/files/file-1", headers={"anthropic-version": "2023-06-01"})
        assert response.status_code == 200 and s.upstream.received[-1].target == "/v1/files/file-1"
        assert s.upstream.received[-1].method == "DELETE"
        head = await http.head("/v1/files/file-1")
        assert head.status_code == 405 and len(s.upstream.received) == 1


@pytest.mark.parametrize(
    ("value", "upstreams"),
    [
        ("off", {}),
        ("openai=https://api.openai.com/v1/", {"openai": "https://api.openai.com/v1"}),
        (
            " anthropic=http://10.0.0.1:8080 , openai=https://gw/openai/v1",
            {"anthropic": "http://10.0.0.1:8080", "openai": "https://gw/openai/v1"},
        ),
    ],
)
def test_passthrough_flag_values(value: str, upstreams: dict[str, str]) -> None:
    assert parse_upstreams(value) == upstreams


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("on", "expected off or openai=URL,anthropic=URL, got 'on'"),
        ("gemini=https://x", "got 'gemini=https://x'"),
        ("openai=ftp://x", "openai: not an http(s) URL: ftp"),
        ("openai=https://x/v1?key=1", "takes no query string"),
    ],
)
def test_passthrough_flag_errors_name_the_fault(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_upstreams(value)


def test_an_upstream_base_path_is_kept_and_openais_v1_not_doubled() -> None:
    metrics = SidecarMetrics()
    relay = Passthrough({"openai": "https://gw.corp/openai/v1", "anthropic": "https://api.anthropic.com"}, metrics)
    assert relay.target("openai", "/v1/audio/speech", "").path == b"/openai/v1/audio/speech"
    assert relay.target("openai", "/audio/speech", "a=1").path == b"/openai/v1/audio/speech?a=1"
    assert relay.target("anthropic", "/v1/messages/batches", "").path == b"/v1/messages/batches"
    assert relay.target("anthropic", "/v1/messages", "").host == b"api.anthropic.com"


async def test_the_answer_comes_back_as_sent_compressed_body_and_repeated_headers_included(tmp_path: Path) -> None:
    body = gzip.compress(json.dumps(CHAT_ANSWER).encode())

    async def reply(received: Received, responder: Responder) -> None:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
        head += b"set-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: %d\r\n\r\n" % len(body)
        responder.writer.write(head + body)
        await responder.writer.drain()

    async with setup(tmp_path, reply) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        request = {"model": "gpt-unrouted", "messages": USER}
        sent = {"accept-encoding": "gzip"}
        async with http.stream("POST", "/v1/chat/completions", json=request, headers=sent) as response:
            raw = b"".join([piece async for piece in response.aiter_raw()])
        assert raw == body  # not decompressed, not re-encoded
        assert response.headers["content-encoding"] == "gzip"
        assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
        assert s.upstream.received[0].headers["accept-encoding"] == "gzip"  # the app's own, not ours


async def test_an_audio_upload_passes_through_byte_for_byte(tmp_path: Path) -> None:
    async def transcript(received: Received, responder: Responder) -> None:
        await responder.json(200, {"text": "hello from upstream"})

    async with setup(tmp_path, transcript) as s, s.openai() as client:
        audio = bytes(range(256)) * 64  # binary, every byte value
        answer = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio, "audio/wav"))
        assert answer.text == "hello from upstream"
        [got] = s.upstream.received
        assert got.target == "/v1/audio/transcriptions" and got.body == s.sent[-1] and audio in got.body
        assert got.headers["content-type"].startswith("multipart/form-data; boundary=")
        assert got.headers["authorization"] == f"Bearer {APP_KEY}"


async def test_an_upload_larger_than_max_body_bytes_is_relayed_as_it_arrives(tmp_path: Path) -> None:
    async def transcript(received: Received, responder: Responder) -> None:
        await responder.json(200, {"text": f"{len(received.body)} bytes"})

    async with setup(tmp_path, transcript, extra=("--max-body-bytes", "65536")) as s, s.openai() as client:
        audio = bytes(range(256)) * 8192  # 2 MiB: 32 times the limit on routed bodies
        answer = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio, "audio/wav"))
        [got] = s.upstream.received
        assert answer.text == f"{len(got.body)} bytes" and got.body == s.sent[-1] and audio in got.body
        # A routed API still reads its JSON whole, within the limit.
        big = [{"role": "user", "content": "x" * 100_000}]
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="chat", messages=big)
        assert refused.value.status_code == 413


async def test_an_upload_reaches_the_upstream_before_the_app_has_sent_all_of_it(tmp_path: Path) -> None:
    first_half = asyncio.Event()
    seen: dict[str, Any] = {}

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        seen["chunked"] = "transfer-encoding: chunked" in head
        body = await reader.readexactly(1000) if not seen["chunked"] else b""
        first_half.set()
        if seen["chunked"]:
            body = await reader.readuntil(b"\r\n0\r\n\r\n")
        else:
            body += await reader.readexactly(1000)
        seen["body"] = body
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with setup(tmp_path, upstream_port=port) as s:
            for framing in (b"content-length: 2000", b"transfer-encoding: chunked"):
                first_half.clear()
                reader, writer = await asyncio.open_connection("127.0.0.1", s.sidecar.app_server.port)
                chunked = framing.startswith(b"transfer")
                writer.write(b"POST /v1/files HTTP/1.1\r\nhost: x\r\n%s\r\n\r\n" % framing)
                writer.write(b"3e8\r\n" + b"a" * 1000 + b"\r\n" if chunked else b"a" * 1000)
                # The upstream has the first half while the app still holds the second.
                await asyncio.wait_for(first_half.wait(), 30)
                writer.write(b"3e8\r\n" + b"b" * 1000 + b"\r\n0\r\n\r\n" if chunked else b"b" * 1000)
                status = await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
                assert status.startswith(b"HTTP/1.1 200")
                assert seen["chunked"] is chunked  # relayed with the framing the app chose
                assert b"a" * 1000 in seen["body"] and b"b" * 1000 in seen["body"]
                writer.close()
    finally:
        server.close()


async def test_an_app_that_leaves_before_the_answer_closes_the_upstream_call(tmp_path: Path) -> None:
    arrived, answer_now, upstream_closed = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def reply(received: Received, responder: Responder) -> None:
        arrived.set()
        await answer_now.wait()
        writer = responder.writer
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            for _ in range(600):  # an endless stream, until the sidecar hangs up
                writer.write(b"a\r\ndata: x\n\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
        except ConnectionError:
            upstream_closed.set()
        responder.closed = True

    async with setup(tmp_path, reply) as s:
        _, writer = await asyncio.open_connection("127.0.0.1", s.sidecar.app_server.port)
        body = json.dumps({"model": "gpt-unrouted", "stream": True}).encode()
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await asyncio.wait_for(arrived.wait(), 30)
        writer.close()  # the app gives up while the upstream is still thinking
        connections = s.sidecar.app_server._ctx.connections  # the sidecar has seen it leave
        for _ in range(300):
            if not connections:
                break
            await asyncio.sleep(0.1)
        assert not connections
        answer_now.set()
        await asyncio.wait_for(upstream_closed.wait(), 30)
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"http://127.0.0.1:{s.sidecar.admin_server.port}/metrics")).text
        assert 'llmroute_requests_in_flight{route="passthrough"} 0.0' in metrics
        assert 'outcome="abandoned",priority="none",route="passthrough"} 1.0' in metrics


def test_azure_sdk_paths_keep_their_own_prefix() -> None:
    relay = Passthrough({"openai": "https://res.openai.azure.com"}, SidecarMetrics())
    target = relay.target("openai", "/openai/deployments/gpt/chat/completions", "api-version=2024-10-21")
    assert target.path == b"/openai/deployments/gpt/chat/completions?api-version=2024-10-21"
    assert target.origin == ("https", "res.openai.azure.com", 443) and not relay.serves("anthropic")


async def test_passthrough_requests_count_against_the_requests_per_minute_limits(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    rate_limits = [
        {"name": "rpm", "requestsPerMinute": 3},
        {"name": "batch-rpm", "requestsPerMinute": 1, "priorities": ["batch"]},  # not this traffic's priority
    ]
    policy = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMPolicy", "metadata": {"name": "shop-limits"},
              "spec": {"rateLimits": rate_limits}}  # fmt: skip
    (policies / "shop.yaml").write_text(json.dumps(policy))
    async with setup(tmp_path, extra=("--policies", str(policies))) as s, s.openai() as client:
        mid_minute = (time.time() // 60 + 1) * 60 + 30
        s.sidecar.ledger.clock = lambda: mid_minute  # held mid-minute: no UTC minute turns during the test
        for _ in range(2):
            await client.moderations.create(input="fine?")  # passthrough
        await client.chat.completions.create(model="chat", messages=USER)  # routed: the same limit
        with pytest.raises(openai.RateLimitError) as refused:
            await client.moderations.create(input="fine?")
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.response.headers["x-llmroute-policy"] == "shop-limits"
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert "passthrough requests count too" in refused.value.message
        assert len(s.upstream.received) == 2  # the refused one never left the sidecar
        async with httpx.AsyncClient(base_url=s.base_url) as http:
            bad = await http.post("/v1/moderations", json={"input": "x"}, headers={"x-llmroute-priority": "urgent"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_priority"
