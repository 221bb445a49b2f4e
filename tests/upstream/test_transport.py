"""The backend HTTP/1.1 pool (sidecar.upstream.transport) against real sockets, on asyncio and on uvloop.

Servers here are raw asyncio streams so each test controls the bytes, the timing and how a connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from llmroute.sidecar.upstream import neterrors
from llmroute.sidecar.upstream.transport import HIGH_WATER, Pool

from .conftest import Handler, Server

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Net:
    """The servers and pools of one test, all closed at its end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.servers: list[Server] = []
        self.pools: list[Pool] = []
        self.pool = self.make_pool()

    def make_pool(self, **options: Any) -> Pool:
        self.pools.append(Pool(**options))
        return self.pools[-1]

    async def serve(self, handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        self.servers.append(await Server(handler, tls).start())
        return self.servers[-1]

    async def answering(self, *answers: bytes, close_after: bool = False, tls: ssl.SSLContext | None = None) -> Server:
        """A server writing `answers` in turn (the last one repeats) to the requests, closing after each if asked."""
        server: Server

        async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await server.request(number, reader):
                writer.write(answers[min(len(server.requests), len(answers)) - 1])
                await writer.drain()
                if close_after:
                    return

        server = await self.serve(handle, tls)
        return server


@contextlib.asynccontextmanager
async def network(tmp: Path) -> AsyncIterator[Net]:
    net = Net(tmp)
    try:
        yield net
    finally:
        for pool in net.pools:
            await pool.aclose()
        for server in net.servers:
            await server.stop()


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with network(tmp_path) as net:
        yield net


async def call(pool: Pool, url: str, body: bytes = b"{}", **headers: str) -> tuple[int, bytes]:
    async with asyncio.timeout(5):  # a broken pool fails the test instead of hanging it
        response = await pool.request("POST", url, {"content-type": "application/json", **headers}, body)
        return response.status, await response.read()


async def test_sequential_requests_share_one_keep_alive_connection(net) -> None:
    server = await net.answering(OK)
    for _ in range(5):
        assert await call(net.pool, server.url()) == (200, b"ok")
    assert server.connections == 1 and len(server.requests) == 5
    head = server.requests[0][1]
    assert head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"accept-encoding: identity\r\n" in head  # bodies are passed on as they come
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in head and head.endswith(b"content-length: 2\r\n\r\n{}")


async def test_concurrent_requests_use_separate_connections_then_are_reused(net) -> None:
    arrived = asyncio.Event()
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(number, reader):
            if len(server.requests) == 3:
                arrived.set()
            await arrived.wait()  # all three are in flight at once
            writer.write(OK)

    server = await net.serve(handle)
    assert await asyncio.gather(*(call(net.pool, server.url()) for _ in range(3))) == [(200, b"ok")] * 3
    assert sorted(number for number, _ in server.requests) == [1, 2, 3]
    await asyncio.gather(*(call(net.pool, server.url()) for _ in range(3)))
    assert server.connections == 3


async def test_idle_connections_beyond_max_idle_are_closed(net) -> None:
    arrived = asyncio.Event()
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(number, reader):
            if len(server.requests) % 2 == 0:
                arrived.set()
            await arrived.wait()
            writer.write(OK)

    server = await net.serve(handle)
    pool = net.make_pool(max_idle=1)
    await asyncio.gather(call(pool, server.url()), call(pool, server.url()))
    await asyncio.sleep(0.05)
    assert len(server.closed) == 1  # one of the two was not kept
    await call(pool, server.url())
    assert server.connections == 2


async def test_idle_connection_past_expiry_is_closed_and_replaced(net) -> None:
    server = await net.answering(OK)
    pool = net.make_pool(keepalive_expiry=0.1)
    await call(pool, server.url())
    await asyncio.sleep(0.2)
    await call(pool, server.url())
    await asyncio.sleep(0.05)
    assert [number for number, _ in server.requests] == [1, 2]
    assert server.closed == [1]  # the expired one was closed by us, not left open


async def test_connection_the_server_closed_while_idle_is_not_used(net) -> None:
    server = await net.answering(OK, close_after=True)  # no Connection: close header, just FIN
    await call(net.pool, server.url())
    await asyncio.sleep(0.05)  # the FIN arrives while the connection is idle
    await call(net.pool, server.url())
    assert [number for number, _ in server.requests] == [1, 2]


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_a_request_that_reached_the_server_is_never_replayed(net, how) -> None:
    """The server drops a reused connection after the request arrived, before answering a byte: it may have
    acted on it (a completion is billed), so the caller gets the error and the server sees it once."""
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(number, reader):
            if len(server.requests) == 2:
                if how == "rst":
                    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                    writer.transport.abort()
                return
            writer.write(OK)

    server = await net.serve(handle)
    assert await call(net.pool, server.url(), b'{"n":1}') == (200, b"ok")
    with pytest.raises((neterrors.ReadError, neterrors.RemoteProtocolError)):
        await call(net.pool, server.url(), b'{"n":2}')
    assert [(number, body[-7:]) for number, body in server.requests] == [(1, b'{"n":1}'), (1, b'{"n":2}')]
    assert await call(net.pool, server.url(), b'{"n":3}') == (200, b"ok")  # the pool goes on with a new one


async def test_fresh_connection_dropped_before_an_answer_is_not_retried(net) -> None:
    server = await net.answering(b"", close_after=True)
    with pytest.raises(neterrors.RemoteProtocolError):
        await call(net.pool, server.url())
    assert server.connections == 1


async def test_no_retry_once_answer_bytes_arrived_on_a_reused_connection(net) -> None:
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(number, reader):
            writer.write(OK if len(server.requests) == 1 else b"HTTP/1.1 200 OK\r\ncontent-le")
            await writer.drain()
            if len(server.requests) == 2:
                return  # gone in the middle of the head

    server = await net.serve(handle)
    await call(net.pool, server.url())
    with pytest.raises(neterrors.RemoteProtocolError):
        await call(net.pool, server.url())
    assert len(server.requests) == 2 and server.connections == 1


@pytest.mark.parametrize(
    ("answer", "server_closes", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world", False, True),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", False, True),
        (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nhello world", True, False),  # ends with the connection
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 11\r\n\r\nhello world", False, False),
        (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
            False,
            True,
        ),
    ],
    ids=["content-length", "chunked", "close-delimited", "connection-close", "early-hints"],
)
async def test_bodies_and_whether_the_connection_is_reused(net, answer, server_closes, reused) -> None:
    server = await net.answering(answer, close_after=server_closes)
    assert await call(net.pool, server.url()) == (200, b"hello world")
    assert await call(net.pool, server.url()) == (200, b"hello world")
    assert server.connections == (1 if reused else 2)


async def test_request_connection_close_is_honoured(net) -> None:
    server = await net.answering(OK)
    await call(net.pool, server.url(), connection="close")
    await call(net.pool, server.url())
    assert server.connections == 2


async def test_answer_headers_and_status(net) -> None:
    answer = b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 0\r\n\r\n"
    server = await net.answering(answer)
    response = await net.pool.request("POST", server.url(), {}, b"{}")
    assert (response.status, await response.read()) == (429, b"")
    assert response.headers["retry-after"] == "3" and response.headers["x-a"] == "1, 2"


async def test_stream_arrives_piece_by_piece(net) -> None:
    go_on = asyncio.Event()
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(number, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nfirst\n\r\n")
        await go_on.wait()  # the second piece only once the first has reached the client
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")

    server = await net.serve(handle)
    response = await net.pool.request("POST", server.url(), {}, b"{}", read_timeout=5)
    assert await asyncio.wait_for(response.receive(), 5) == b"first\n"
    go_on.set()
    assert await asyncio.wait_for(response.receive(), 5) == b"second\n"
    assert await response.receive() == b""


async def test_slow_reader_stops_the_socket_being_read(net) -> None:
    """A long fast answer read slowly is not buffered whole: the server is held back, then resumes."""
    total, piece = 64 * 2**20, b"x" * 2**20
    sent = 0
    server: Server

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await server.request(number, reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        while sent < total:
            writer.write(piece)
            await writer.drain()
            sent += len(piece)

    server = await net.serve(handle)
    response = await net.pool.request("POST", server.url(), {}, b"{}", read_timeout=5)
    received = len(await response.receive())
    await asyncio.sleep(0.5)  # unhindered, loopback moves the whole 64 MiB in far less
    assert sent <= total // 2, f"the server wrote {sent >> 20} MiB while the reader slept"
    while chunk := await response.receive():
        received += len(chunk)
        assert len(chunk) <= 2 * HIGH_WATER  # what was buffered: the mark plus at most one 256 KiB read
    assert received == total == sent


async def test_closing_mid_body_closes_the_connection(net) -> None:
    server = await net.answering(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    response = await net.pool.request("POST", server.url(), {}, b"{}")
    assert await response.receive() == b"partial"
    response.close()
    await asyncio.sleep(0.05)
    assert server.closed == [1]
    await net.pool.request("POST", server.url(), {}, b"{}")
    assert server.connections == 2


async def test_closing_once_the_whole_answer_arrived_keeps_the_connection(net) -> None:
    """A stream's reader stops at its [DONE]: if the end of the body came with it, the connection is reused."""
    server = await net.answering(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nDONE\r\n4\r\nmore\r\n0\r\n\r\n"
    )
    response = await net.pool.request("POST", server.url(), {}, b"{}")
    assert await response.receive() == b"DONEmore"  # two chunked frames from one network read, together
    response.close()
    assert await call(net.pool, server.url()) == (200, b"DONEmore")
    assert server.connections == 1 and server.closed == []


async def test_connection_refused_is_a_connect_error(net) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(neterrors.ConnectError):
        await call(net.pool, f"http://127.0.0.1:{port}/v1/chat/completions")


async def test_silent_tls_peer_is_a_connect_timeout(net) -> None:
    """The TLS handshake is part of connecting: a peer that accepts but never answers it times out there."""

    async def handle(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await net.serve(handle)
    with pytest.raises(neterrors.ConnectTimeout):
        await net.pool.request("GET", server.url().replace("http:", "https:"), {}, connect_timeout=0.2)


async def test_silent_server_is_a_read_timeout_for_the_head_and_between_pieces(net) -> None:
    async def hang(number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    server = await net.serve(hang)
    with pytest.raises(neterrors.ReadTimeout):
        await net.pool.request("POST", server.url(), {}, b"{}", read_timeout=0.1)

    stalls = await net.answering(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
    response = await net.pool.request("POST", stalls.url(), {}, b"{}", read_timeout=0.1)
    assert await response.receive() == b"partial"
    with pytest.raises(neterrors.ReadTimeout):
        await response.receive()


async def test_malformed_answer_is_a_protocol_error(net) -> None:
    server = await net.answering(b"SMTP ready\r\n\r\n")
    with pytest.raises(neterrors.RemoteProtocolError):
        await call(net.pool, server.url())


async def test_headers_that_could_split_the_request_are_refused(net) -> None:
    with pytest.raises(neterrors.LocalProtocolError):
        await net.pool.request("POST", "http://127.0.0.1:9/x", {"authorization": "Bearer k\r\nx-evil: 1"}, b"{}")
    with pytest.raises(neterrors.UnsupportedProtocol):
        await net.pool.request("POST", "ftp://127.0.0.1/x", {}, b"{}")


def self_signed(where: Path) -> tuple[Path, Path]:
    """A certificate and key for `localhost`, made with the openssl binary (the test is skipped without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a test certificate")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_https_with_sni_and_verification(net) -> None:
    cert, key = self_signed(net.tmp)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    server = await net.answering(OK, tls=server_tls)

    trusting = net.make_pool(ssl_context=ssl.create_default_context(cafile=str(cert)))
    for _ in range(3):
        assert await call(trusting, server.url(host="localhost")) == (200, b"ok")
    assert names == ["localhost"] and server.connections == 1
    with pytest.raises(neterrors.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await call(net.make_pool(), server.url(host="localhost"))  # the public roots refuse it


UVLOOP = [
    test_sequential_requests_share_one_keep_alive_connection,
    test_concurrent_requests_use_separate_connections_then_are_reused,
    test_connection_the_server_closed_while_idle_is_not_used,
    functools.partial(test_a_request_that_reached_the_server_is_never_replayed, how="rst"),
    test_no_retry_once_answer_bytes_arrived_on_a_reused_connection,
    test_stream_arrives_piece_by_piece,
    test_slow_reader_stops_the_socket_being_read,
    test_closing_mid_body_closes_the_connection,
    test_connection_refused_is_a_connect_error,
    test_silent_tls_peer_is_a_connect_timeout,
    test_silent_server_is_a_read_timeout_for_the_head_and_between_pieces,
    test_https_with_sni_and_verification,
]


@pytest.mark.parametrize("scenario", UVLOOP, ids=lambda s: getattr(s, "__name__", None) or s.func.__name__)
def test_on_uvloop(scenario: Callable[[Net], Awaitable[None]], tmp_path: Path) -> None:
    """Production runs on uvloop, whose transports differ from asyncio's in the details."""

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with network(tmp_path) as net:
            await scenario(net)

    uvloop.run(main())
