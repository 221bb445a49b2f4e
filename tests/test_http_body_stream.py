"""Request bodies streamed to a running handler (what passthrough relays uploads with), over real sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping

import pytest

from llmroute.http import BodyError, Request, Response, run

from .test_http_server import ServerFactory, read_response, servers

UPLOAD = "/upload"


def streams(path: str, headers: Mapping[str, str]) -> bool:
    return path == UPLOAD


class Seen:
    """What the handler saw of a streamed body, and a gate a test opens to let it start reading."""

    def __init__(self) -> None:
        self.first_chunk = asyncio.Event()
        self.may_read = asyncio.Event()
        self.may_read.set()
        self.error: BaseException | None = None

    async def handler(self, request: Request) -> Response:
        if request.body_stream is None:
            return Response(200, json.dumps({"buffered": len(request.body)}).encode())
        await self.may_read.wait()
        size = 0
        try:
            async for chunk in request.body_stream:
                size += len(chunk)
                self.first_chunk.set()
        except BodyError as exc:
            self.error = exc
            return Response(408, b"{}")
        except asyncio.CancelledError as exc:  # the server stops a handler whose client left
            self.error = exc
            raise
        return Response(200, json.dumps({"streamed": size, "length": request.body_stream.length}).encode())


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    async with servers() as start:
        yield start


async def test_the_handler_reads_the_body_while_it_arrives(serve: ServerFactory) -> None:
    seen = Seen()
    server = await serve(seen.handler, streams_body=streams, max_body_bytes=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4000\r\n\r\n" + b"a" * 2000)
    # The handler has the first half before the client sent the second: the body was not buffered whole.
    await asyncio.wait_for(seen.first_chunk.wait(), 10)
    writer.write(b"b" * 2000)
    status, headers, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"streamed": 4000, "length": 4000})
    assert "connection" not in headers  # the body was read to its end: the connection stays open
    # ... and carries the next request, whose path is not streamed: max_body_bytes applies again.
    writer.write(b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + b"c" * 2000)
    status, _, _ = await read_response(reader)
    assert status == 413
    writer.close()


async def test_a_chunked_upload_larger_than_the_memory_it_may_take_is_flow_controlled(serve: ServerFactory) -> None:
    seen = Seen()
    seen.may_read.clear()
    server = await serve(seen.handler, streams_body=streams)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    piece = b"x" * (1 << 20)
    total = 64

    async def upload() -> None:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(total):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    sending = asyncio.create_task(upload())
    await asyncio.sleep(1.0)
    # 64 MiB cannot all have left the client: the server stopped reading while its handler did not.
    assert not sending.done()
    seen.may_read.set()
    await asyncio.wait_for(sending, 60)
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"streamed": total << 20, "length": None})
    writer.close()


async def test_an_answer_before_the_body_ended_closes_the_connection_cleanly(serve: ServerFactory) -> None:
    async def refuse(request: Request) -> Response:
        return Response(403, b'{"error": "denied"}')

    server = await serve(refuse, streams_body=streams)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (403, "close", b'{"error": "denied"}')
    writer.write(b"a" * 99000)  # the rest is read and discarded, not answered with a reset
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_client_that_leaves_or_stalls_mid_body_ends_the_read_with_an_error(serve: ServerFactory) -> None:
    seen = Seen()
    server = await serve(seen.handler, streams_body=streams, read_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    status, headers, _ = await read_response(reader)  # it went silent: 408 after read_timeout
    assert (status, headers["connection"]) == (408, "close")
    assert isinstance(seen.error, BodyError) and "stalled" in str(seen.error)
    writer.close()

    seen = Seen()
    server = await serve(seen.handler, streams_body=streams)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    await asyncio.wait_for(seen.first_chunk.wait(), 10)
    writer.close()
    for _ in range(100):
        if seen.error is not None:
            break
        await asyncio.sleep(0.05)
    assert isinstance(seen.error, asyncio.CancelledError)  # not left waiting for bytes that never come


async def test_a_streamed_request_pipelined_behind_another_is_served(serve: ServerFactory) -> None:
    seen = Seen()
    server = await serve(seen.handler, streams_body=streams)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /other HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
    )
    first = await read_response(reader)
    second = await read_response(reader)
    assert (first[0], json.loads(first[2])) == (200, {"buffered": 3})
    assert (second[0], json.loads(second[2])) == (200, {"streamed": 5, "length": 5})
    writer.close()


def test_streamed_bodies_on_uvloop() -> None:
    """Production runs on uvloop: its flow control (pause/resume reading) must behave the same."""

    async def main() -> None:
        async with servers() as start:
            await test_the_handler_reads_the_body_while_it_arrives(start)
            await test_a_chunked_upload_larger_than_the_memory_it_may_take_is_flow_controlled(start)

    run(main())
