"""bench/overhead/relay.py, the minimal relay bench.overhead.idle measures the sidecar against: it must carry
requests and answers byte for byte, both Content-Length and chunked ones, many on one kept-alive connection,
or its latency says nothing."""

from __future__ import annotations

import asyncio
import contextlib

from bench.overhead import relay

SIZED = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"


async def test_the_relay_carries_requests_and_answers_unchanged_over_one_connection() -> None:
    received: list[bytes] = []
    answers = [SIZED, CHUNKED, SIZED]

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            received.append(await relay.read_message(reader))
            writer.write(answer)
        writer.close()

    upstream = await asyncio.start_server(backend, "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    front = await asyncio.start_server(lambda r, w: relay.serve(upstream_port, 2, r, w), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", front.sockets[0].getsockname()[1])
    requests = [
        b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{"model":"m"}',
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
        b"POST /slow/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    ]
    try:
        for request, answer in zip(requests, answers, strict=True):
            writer.write(request)
            assert await asyncio.wait_for(relay.read_message(reader), 10) == answer
        assert received == requests
        writer.write(requests[0])  # the backend has closed its end: the relay closes the app's
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        for server in (front, upstream):
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
