"""How a stream's bytes reach the app: events that arrived together leave together, each one as it arrives.

The upstream is a scripted raw socket (so the test decides what arrives in one network write) and the
app a raw socket reading the chunked body frame by frame: one frame is one write of the sidecar.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from .harness import chat_body, sidecar_for

ROLE = {"role": "assistant", "content": ""}
EVENTS = [
    {"choices": [{"index": 0, "delta": ROLE, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
]
SSE = [b"data: " + json.dumps({"object": "chat.completion.chunk", **e}).encode() + b"\n\n" for e in EVENTS]
SSE.append(b"data: [DONE]\n\n")
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"

# Writes one streamed answer on the connection, given the writer.
Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


def frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a backend that reads each request and answers it with the test's script; returns its URL."""
    servers: list[asyncio.Server] = []

    async def start(script: Script) -> str:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(v) for k, _, v in (h.partition(b":") for h in head.split(b"\r\n")) if k == b"content-length"
            )
            await reader.readexactly(length)
            await script(writer)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"

    yield start
    for server in servers:
        server.close()


async def frames_of_a_stream(port: int, seen: Callable[[bytes], Awaitable[None]] | None = None) -> list[bytes]:
    """POST a streamed chat request as the app and return the chunked body's frames as they came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(chat_body(stream=True)).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
    frames: list[bytes] = []
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        frames.append((await reader.readexactly(size + 2))[:-2])
        if seen is not None:
            await seen(frames[-1])
    writer.close()
    return frames


def spec(url: str) -> dict[str, object]:
    return {"models": ["chat"], "backends": [{"name": "up", "provider": "openai", "url": url, "model": "m"}]}


async def test_events_that_arrive_in_one_read_reach_the_app_in_one_write(tmp_path: Path, upstream) -> None:
    async def all_at_once(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + b"".join(frame(event) for event in SSE) + b"0\r\n\r\n")
        await writer.drain()

    async with sidecar_for(tmp_path, spec(await upstream(all_at_once))) as sidecar:
        frames = await asyncio.wait_for(frames_of_a_stream(sidecar.app_server.port), 10)

    # One write for 4 content events, the cost comment and [DONE] (the usage chunk was not asked for).
    assert len(frames) == 1
    events = frames[0].split(b"\n\n")
    assert [e + b"\n\n" for e in events[:4]] == SSE[:4]
    assert events[4].startswith(b": x-llmroute-cost-usd=") and events[5:] == [b"data: [DONE]", b""]


async def test_events_that_arrive_apart_reach_the_app_one_by_one_as_they_arrive(tmp_path: Path, upstream) -> None:
    arrived: asyncio.Queue[bytes] = asyncio.Queue()

    async def one_by_one(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for event in SSE:
            writer.write(frame(event))
            await writer.drain()
            if event != SSE[-1] and event != SSE[-2]:  # DONE, and the usage chunk the app did not ask for
                # The next event is sent only once the app has this one: an event held back hangs the test.
                assert await asyncio.wait_for(arrived.get(), 5) == event
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with sidecar_for(tmp_path, spec(await upstream(one_by_one))) as sidecar:
        frames = await asyncio.wait_for(frames_of_a_stream(sidecar.app_server.port, arrived.put), 10)

    assert frames[:4] == SSE[:4]
    assert len(frames) == 5 and frames[4].startswith(b": x-llmroute-cost-usd=")
    assert frames[4].endswith(b"\n\ndata: [DONE]\n\n")
