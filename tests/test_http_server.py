"""llmroute.http.HTTPServer over real sockets: framing, keep-alive, limits, streaming and draining."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import httpx
import pytest

from llmroute.http import HTTPServer, Request, Response, StreamingResponse, run

ServerFactory = Callable[..., Awaitable[HTTPServer]]


def error_body(status: int, message: str, path: str, headers: Mapping[str, str]) -> bytes:
    """Says which request it answers, so tests can tell the server passed on what it had parsed."""
    return json.dumps({"error": {"message": message, "status": status, "path": path}}).encode()


async def echo(request: Request) -> Response:
    """Answers with what it saw, so tests can tell what reached the handler."""
    seen = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode(),
        "client_port": request.client[1] if request.client else None,
        "header": request.headers.get("x-test"),
    }
    return Response(200, json.dumps(seen).encode(), [("x-echo", "1")])


async def slow_echo(request: Request) -> Response:
    """echo, after half a second: longer than the read timeouts the tests set."""
    await asyncio.sleep(0.5)
    return await echo(request)


@contextlib.asynccontextmanager
async def servers() -> AsyncIterator[ServerFactory]:
    """Start servers on demand; shut them all down at the end."""
    started: list[HTTPServer] = []

    async def start(
        handler: Callable[[Request], Awaitable[Response | StreamingResponse]] = echo, **options: object
    ) -> HTTPServer:
        server = HTTPServer(handler, error_body=error_body, **options)  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.shutdown(0.5)


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    async with servers() as start:
        yield start


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length framed response from a raw stream."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def test_keep_alive_reuses_one_connection(serve: ServerFactory) -> None:
    server = await serve()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        first = (await client.get("/a", params={"q": "1"})).json()
        second = (await client.post("/b%20c", content=b"hi", headers={"x-test": "yes"})).json()
    assert first["client_port"] == second["client_port"]
    assert (first["path"], first["query"]) == ("/a", "q=1")
    assert second == {**second, "method": "POST", "path": "/b c", "body": "hi", "header": "yes"}


async def test_repeated_headers_are_joined_as_one_list(serve: ServerFactory) -> None:
    async def headers(request: Request) -> Response:
        return Response(200, json.dumps(request.headers).encode())

    server = await serve(headers)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nAccept: a/b\r\nCookie: x=1\r\nAccept: c/d\r\nCookie: y=2\r\n\r\n")
    _, _, body = await read_response(reader)
    writer.close()
    seen = json.loads(body)
    assert (seen["accept"], seen["cookie"]) == ("a/b, c/d", "x=1; y=2")


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout_counted_from_its_last_answer(
    serve: ServerFactory,
) -> None:
    server = await serve(keepalive_timeout=1.0)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    # Requests 0.2 s apart for 2 s in all: longer than the timeout, but the connection never idles that long.
    for _ in range(10):
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers.get("connection")) == (200, None)
        await asyncio.sleep(0.2)
    last_answer = loop.time() - 0.2
    assert await asyncio.wait_for(reader.read(), 10) == b""  # the server closed it once idle for 1 s
    assert loop.time() - last_answer >= 0.9
    writer.close()


async def test_connection_close_and_http10_end_the_connection(serve: ServerFactory) -> None:
    server = await serve()
    for request in (b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", b"GET /x HTTP/1.0\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_http10_keep_alive_is_honoured(serve: ServerFactory) -> None:
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    for _ in range(2):
        writer.write(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive")
    writer.close()


async def test_pipelined_requests_are_answered_in_order(serve: ServerFactory) -> None:
    async def slow_first(request: Request) -> Response:
        if request.path == "/1":
            await asyncio.sleep(0.05)  # finishes last if requests were handled concurrently
        return Response(200, request.path.encode(), content_type="text/plain")

    server = await serve(slow_first)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in (1, 2, 3)))
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"/1", b"/2", b"/3"]
    writer.close()


async def test_chunked_request_body_is_reassembled(serve: ServerFactory) -> None:
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)["body"]) == (200, "hello world")
    writer.close()


async def test_oversized_content_length_gets_413_before_the_body_is_read(serve: ServerFactory) -> None:
    server = await serve(max_body_bytes=1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")  # no body sent
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(body) == {"error": {"message": "request body too large", "status": 413, "path": "/big"}}
    writer.close()
    # A client that sends the whole body still gets the answer, not a connection reset.
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{server.port}/big", content=b"x" * 300_000)
    assert response.status_code == 413


async def test_oversized_chunked_body_gets_413(serve: ServerFactory) -> None:
    server = await serve(max_body_bytes=1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 200

    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{server.port}/big", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["status"] == 413


async def test_malformed_request_gets_400_and_close(serve: ServerFactory) -> None:
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"THIS IS NOT HTTP\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], json.loads(body)["error"]["status"]) == (400, "close", 400)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_request_that_never_arrives_in_full_gets_408_and_close(serve: ServerFactory) -> None:
    server = await serve(read_timeout=0.3)
    loop = asyncio.get_running_loop()
    for partial in (b"POST /x HTTP/1.1\r\nHost: t\r\nX-Slow: ", b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        started = loop.time()
        writer.write(partial)  # ... and not another byte: a slowloris
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (408, "close")
        error = json.loads(body)["error"]
        assert "did not arrive in full within 0.3 s" in error["message"]
        assert error["path"] == "/x"  # the error body knows which request it answers
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 < loop.time() - started < 2
        writer.close()


async def test_a_request_pipelined_behind_a_slow_answer_is_timed_from_its_end(serve: ServerFactory) -> None:
    server = await serve(slow_echo, read_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\nGET /second HTTP/1.1\r\nHost:")  # second never ends
    first, _, _ = await read_response(reader)
    assert first == 200 and loop.time() - started >= 0.5
    second, headers, _ = await read_response(reader)
    assert (second, headers["connection"]) == (408, "close")
    assert loop.time() - started >= 0.65  # 0.5 s answering the first, then 0.2 s for the rest of the second
    writer.close()


async def test_a_slow_handler_is_not_a_slow_request(serve: ServerFactory) -> None:
    server = await serve(slow_echo, read_timeout=0.2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        for _ in range(2):  # and the timer is not left running into the next request on the connection
            assert (await client.post("/x", content=b"body")).status_code == 200


async def test_handler_exception_is_a_500_without_details(serve: ServerFactory) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret internals")

    server = await serve(broken)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"]["status"] == 500


async def test_stream_chunks_are_delivered_as_they_are_produced(serve: ServerFactory) -> None:
    first_received = asyncio.Event()

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await first_received.wait()  # the last chunk is produced only after the first arrived
            yield b"data: 2\n\n"

        return StreamingResponse(200, chunks(), [("cache-control", "no-cache")])

    server = await serve(stream)
    received = []
    async with httpx.AsyncClient() as client, client.stream("GET", f"http://127.0.0.1:{server.port}/") as response:
        assert response.headers["content-type"] == "text/event-stream"
        async for part in response.aiter_bytes():
            received.append(part)
            first_received.set()
    assert b"".join(received) == b"data: 1\n\ndata: 2\n\n"
    assert received[0] == b"data: 1\n\n"


async def test_client_disconnect_cancels_the_stream(serve: ServerFactory) -> None:
    stopped = asyncio.Event()

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"data: 1\n\n"
                await asyncio.Event().wait()  # an upstream that would never finish
                yield b"never"
            finally:
                stopped.set()

        return StreamingResponse(200, chunks())

    server = await serve(stream)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await reader.readuntil(b"data: 1\n\n")
    writer.close()
    await asyncio.wait_for(stopped.wait(), 5)
    assert server.in_flight == 0


async def test_handler_can_drop_the_connection(serve: ServerFactory) -> None:
    async def crash(request: Request) -> Response:
        request.abort(reset=request.path == "/reset")
        return Response(200, b"never sent")

    server = await serve(crash)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        with pytest.raises(httpx.ReadError):  # ECONNRESET
            await client.get("/reset")
        with pytest.raises(httpx.RemoteProtocolError):  # closed without an answer
            await client.get("/close")


async def test_failing_stream_is_cut_off_not_completed(serve: ServerFactory) -> None:
    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            raise RuntimeError("upstream broke")

        return StreamingResponse(200, chunks())

    server = await serve(stream)
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{server.port}/")


async def test_shutdown_drains_in_flight_request_and_stream(serve: ServerFactory) -> None:
    release, both_started = asyncio.Event(), asyncio.Event()
    started: list[str] = []

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/warm":
            return Response(200)
        started.append(request.path)
        if len(started) == 2:
            both_started.set()
        if request.path == "/slow":
            await release.wait()
            return Response(200, b"slow done", content_type="text/plain")

        async def chunks() -> AsyncIterator[bytes]:
            yield b"a"
            await release.wait()
            yield b"b"

        return StreamingResponse(200, chunks(), content_type="text/plain")

    server = await serve(handler)
    base = f"http://127.0.0.1:{server.port}"
    async with httpx.AsyncClient(base_url=base) as client, httpx.AsyncClient(base_url=base) as idle_client:
        await idle_client.get("/warm")  # leaves an idle keep-alive connection behind
        slow = asyncio.create_task(client.get("/slow"))
        stream = asyncio.create_task(client.get("/stream"))
        await asyncio.wait_for(both_started.wait(), 5)
        assert server.in_flight == 2
        shutdown = asyncio.create_task(server.shutdown(grace=5))
        await asyncio.sleep(0.02)
        assert not shutdown.done()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
        release.set()
        slow_response, stream_response = await slow, await stream
        await asyncio.wait_for(shutdown, 5)
    assert (slow_response.text, slow_response.headers["connection"]) == ("slow done", "close")
    assert stream_response.text == "ab"
    assert server.in_flight == 0


async def test_shutdown_gives_up_after_grace(serve: ServerFactory) -> None:
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()
        return Response(200)

    server = await serve(stuck)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(entered.wait(), 5)
    await asyncio.wait_for(server.shutdown(grace=0.1), 2)
    assert cancelled.is_set()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(reader.read(), 2)
    writer.close()


async def test_request_completed_while_draining_gets_503(serve: ServerFactory) -> None:
    server = await serve()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /late HTTP/1.1\r\nHost: t\r\n")  # headers not finished when shutdown starts
    await asyncio.sleep(0.01)
    shutdown = asyncio.create_task(server.shutdown(grace=5))
    await asyncio.sleep(0.01)
    writer.write(b"\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], json.loads(body)["error"]["status"]) == (503, "close", 503)
    writer.close()
    await asyncio.wait_for(shutdown, 5)


@pytest.mark.parametrize(
    "scenario",
    [
        test_pipelined_requests_are_answered_in_order,
        test_oversized_content_length_gets_413_before_the_body_is_read,
        test_a_request_that_never_arrives_in_full_gets_408_and_close,
        test_client_disconnect_cancels_the_stream,
        test_handler_can_drop_the_connection,
        test_shutdown_drains_in_flight_request_and_stream,
        test_shutdown_gives_up_after_grace,
    ],
)
def test_on_uvloop(scenario: Callable[[ServerFactory], Awaitable[None]]) -> None:
    """Production runs on uvloop (llmroute.http.run): its transports must behave the same."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with servers() as start:
            await scenario(start)

    run(main())
