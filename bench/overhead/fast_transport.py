"""Prototype (bench only): an httpx transport over a plain asyncio connection pool with httptools' parser.

Measures how much of the sidecar's per-request CPU httpcore's pool and anyio layer cost: `RawTransport`
keeps idle keep-alive connections per origin in a LIFO list (O(1) checkout, no per-request scan of the
pool, no poll() of every idle socket), writes the request head in one call and parses the answer with
httptools. HTTP/1.1 only; timeouts are left to the caller (the sidecar wraps calls in asyncio.timeout).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import cast

import httptools
import httpx

_Origin = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the socket, httptools' parser, and the answer being received."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: deque[bytes] = deque()
        self.complete = False
        self.keep_alive = False
        self.error: Exception | None = None
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._more: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"bad answer from upstream: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(httpx.ReadError("upstream closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message is complete
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        if self._more is not None and not self._more.done():
            self._more.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved here; raised again to the awaiting caller
        self._wake()
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def send(self, head: bytes, body: bytes) -> None:
        """Write the request and wait for the answer's head."""
        self._reset()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        await self.head

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        while True:
            while self.body:
                yield self.body.popleft()
            if self.complete:
                return
            if self.error is not None:
                raise self.error
            self._more = asyncio.get_running_loop().create_future()
            await self._more


class _Body(httpx.AsyncByteStream):
    """The answer's body; closing it gives the connection back to the pool when it can be reused."""

    def __init__(self, pool: RawTransport, origin: _Origin, connection: _Connection) -> None:
        self._pool, self._origin, self._connection = pool, origin, connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._connection.chunks():
            yield chunk

    async def aclose(self) -> None:
        connection = self._connection
        if connection.complete and connection.keep_alive and not connection.closed:
            self._pool.release(self._origin, connection)
        else:
            connection.close()


class RawTransport(httpx.AsyncBaseTransport):
    """httpx transport with an O(1) keep-alive pool per origin and httptools parsing (HTTP/1.1)."""

    def __init__(self, max_idle: int = 256) -> None:
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._max_idle = max_idle
        self._tls = ssl.create_default_context()

    async def _connect(self, origin: _Origin) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                _Connection,
                host,
                port,
                ssl=self._tls if scheme == "https" else None,
                server_hostname=host if scheme == "https" else None,
            )
        except OSError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        return connection

    def release(self, origin: _Origin, connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self._max_idle:
            idle.append(connection)
        else:
            connection.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = await request.aread()
        lines = [request.method.encode() + b" " + url.raw_path + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in request.headers.raw]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        connection = await self._connect(origin)
        try:
            await connection.send(head, body)
        except BaseException:
            connection.close()
            raise
        status = connection.parser.get_status_code()
        return httpx.Response(
            status,
            headers=connection.headers,
            stream=_Body(self, origin, connection),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
