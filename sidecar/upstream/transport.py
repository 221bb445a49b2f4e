"""HTTP/1.1 client for backend calls: an O(1) keep-alive pool per origin, answers parsed by httptools.

httpx's default transport (httpcore) re-checks every pooled connection, with a poll() each, on every
request: ~70% of the sidecar's CPU under load. This pool pops the most recently used idle connection
instead and checks its age only then. Failures are raised as the httpx exceptions that
`errors.error_from_transport` classifies (ConnectError/ConnectTimeout, ReadTimeout, ReadError, ...).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, cast

import httptools
import httpx

KEEPALIVE_EXPIRY = 30.0  # seconds an idle connection may wait for reuse; older ones are closed at checkout
MAX_IDLE = 256  # idle connections kept per origin
HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops being read, until the reader takes them

_Origin = tuple[str, str, int]
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Bodies are passed on as they come, so ask for them uncompressed; some CDNs refuse requests without a UA.
_FIXED_HEADERS = b"accept-encoding: identity\r\nuser-agent: llmroute\r\n"


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split once: where to connect, and what goes in the request line and the Host header."""

    origin: _Origin
    path: bytes
    host: bytes


def parse_target(url: str) -> Target:
    """Split an http(s) URL; httpx.UnsupportedProtocol for anything else."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise httpx.UnsupportedProtocol(f"invalid URL: {exc}") from None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise httpx.UnsupportedProtocol(f"not an http(s) URL: {scheme or 'no scheme'}")
    host = parsed.raw_host
    if b":" in host:  # IPv6 literal
        host = b"[" + host + b"]"
    if parsed.port is not None:
        host += b":%d" % parsed.port
    origin = (scheme, parsed.raw_host.decode("ascii"), parsed.port or _DEFAULT_PORTS[scheme])
    return Target(origin, parsed.raw_path, host)


def request_head(
    method: str, target: Target, headers: Mapping[str, str], body: bytes, fixed: bytes = _FIXED_HEADERS
) -> bytes:
    """The request line and headers (`fixed` first: ours for backend calls, none when relaying an app's own);
    httpx.LocalProtocolError if a header could split the request."""
    lines = [method.encode("ascii"), b" ", target.path, b" HTTP/1.1\r\nhost: ", target.host, b"\r\n", fixed]
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2]:
            raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
        try:
            lines.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError(f"header {name!r} is not latin-1") from None
    if body or method == "POST":
        lines.append(b"content-length: %d\r\n" % len(body))
    lines.append(b"\r\n")
    return b"".join(lines)


class _Unsolicited(Exception):
    """Bytes after the answer we asked for: the connection is out of step and must not be reused."""


class _NotSent(httpx.ReadError):
    """The connection was closed before the request was written: it provably never reached the server."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the socket, httptools' parser, and the state of the current answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._begin(keep_alive=False)
        self.active = False

    def _begin(self, *, keep_alive: bool) -> None:
        """Fresh state for the next answer."""
        self.active = True  # an answer is expected (or being read)
        self.keep_alive = keep_alive
        self.received = False
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.interim = False
        self.delimited = False  # Content-Length or chunked: the end is known without waiting for EOF
        self.complete = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.error: httpx.TransportError | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self.close()  # an idle connection has nothing to say; it is out of step
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Unsolicited):
                raise
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer from upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.active or self.complete or self.error is not None:
            return
        if exc is not None:
            self._fail(httpx.ReadError(f"connection lost: {exc}" if str(exc) else "connection reset"))
        elif self.head_done and not self.delimited:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif self.head_done:
            self._fail(httpx.RemoteProtocolError("upstream closed the connection in the middle of the body"))
        else:
            self._fail(httpx.RemoteProtocolError("upstream closed the connection without an answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.complete:
            raise _Unsolicited

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
            self.delimited = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self.keep_alive = self.keep_alive and self.parser.should_keep_alive()  # llhttp forgets it later
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            self.headers = []
            self.delimited = False
            return
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: httpx.TransportError) -> None:
        self.error = error
        self._wake()
        self.close()

    def _time_out(self, waiter: asyncio.Future[None], read_timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(httpx.ReadTimeout(f"no data from upstream within {read_timeout:g}s"))

    async def _wait(self, read_timeout: float | None) -> None:
        """Until the parser has news (or the connection failed); httpx.ReadTimeout after `read_timeout`."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if read_timeout is None else loop.call_later(read_timeout, self._time_out, waiter, read_timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def take_body(self) -> bytes:
        """The body bytes that arrived and were not read yet; the socket is read again if they had paused it."""
        chunks, self.chunks = self.chunks, []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def reusable(self) -> bool:
        """The answer was read to its end and both sides keep the connection alive."""
        return self.complete and self.keep_alive and not self.closed and not self.chunks

    async def exchange(self, data: bytes, *, keep_alive: bool, read_timeout: float | None) -> None:
        """Send a request and wait for the answer's status and headers (closing the connection on failure)."""
        self._begin(keep_alive=keep_alive)
        assert self.transport is not None
        try:
            if self.closed:
                raise _NotSent("connection closed before the request was sent")
            self.transport.write(data)
            while not self.head_done:
                if self.error is not None:
                    raise self.error
                await self._wait(read_timeout)
        except BaseException:
            self.close()
            raise

    async def receive(self, read_timeout: float | None) -> bytes:
        """All of the body that has arrived and not been read yet (waiting for some if none has); b"" at its
        end. A network read may hold several chunked-encoding frames: they come back together."""
        while not self.chunks:
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            await self._wait(read_timeout)
        return self.take_body()


class Response:
    """An answer's status and headers; the body comes from `read()` or piece by piece from `receive()`.

    Reading the body to its end returns the connection to the pool, and so does `close()` once the whole
    answer has arrived; `close()` before that closes the connection.
    """

    __slots__ = ("_connection", "_origin", "_pool", "_timeout", "raw_headers", "status")

    def __init__(self, pool: Pool, origin: _Origin, connection: _Connection, timeout: float | None) -> None:
        self.status = connection.status
        self.raw_headers = connection.headers
        self._pool = pool
        self._origin = origin
        self._connection: _Connection | None = connection
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"Response({self.status})"

    @property
    def headers(self) -> dict[str, str]:
        """Headers by lower-case name (repeated ones joined with ", ")."""
        joined: dict[str, str] = {}
        for raw_name, raw_value in self.raw_headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            joined[name] = f"{joined[name]}, {value}" if name in joined else value
        return joined

    @property
    def arrived(self) -> bool:
        """The whole answer has been received (a small JSON answer usually comes with its head)."""
        return self._connection is None or self._connection.complete

    def set_read_timeout(self, seconds: float) -> None:
        """From now on, how long each piece of the body may take."""
        self._timeout = seconds

    async def receive(self) -> bytes:
        """The next piece of the body as it arrived (httpx.ReadTimeout after the read timeout); b"" at its end."""
        connection = self._connection
        if connection is None:
            return b""
        try:
            chunk = await connection.receive(self._timeout)
        except BaseException:
            self.close()
            raise
        if not chunk:
            self._connection = None
            self._pool.release(self._origin, connection)
        return chunk

    async def read(self) -> bytes:
        """The whole body."""
        parts = []
        while chunk := await self.receive():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Done with the answer (idempotent). A connection that has received all of it goes back to the
        pool, unread bytes dropped (a stream's reader stops at its [DONE]); one mid-answer is closed."""
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if connection.complete:
            connection.take_body()  # the rest of an answer the caller did not need
            self._pool.release(self._origin, connection)
        else:
            connection.close()


class Pool:
    """HTTP/1.1 keep-alive connections per origin, reused last-in first-out (no limit on open ones).

    No background task: a connection idle longer than `keepalive_expiry` is closed when a checkout
    finds it, and one the server closed is skipped.
    """

    def __init__(
        self,
        *,
        max_idle: int = MAX_IDLE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._max_idle = max_idle
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._closed = False

    def __repr__(self) -> str:
        return f"Pool(idle={sum(len(idle) for idle in self._idle.values())})"

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Coroutine[Any, Any, Response]:
        """Send a request; awaited, it returns once the answer's head arrived (the body is read from the
        Response).

        A request is sent again (on a new connection) only when it provably never left: the reused connection
        was found closed before it was written. Once written, a POST may have reached the backend, which
        may bill it, so a connection lost before the answer is the caller's error, never a silent replay
        (whether to try again, and where, is the route's retry policy).
        """
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = parse_target(url)
        data = request_head(method, target, headers, body) + body
        keep_alive = True
        for name, value in headers.items():  # a loop, not all(genexpr): no generator on every backend call
            if name.lower() == "connection" and value.lower() == "close":
                keep_alive = False
        # The coroutine of `send` itself, not one awaiting it: no extra frame on every backend call.
        return self.send(
            target, data, keep_alive=keep_alive, connect_timeout=connect_timeout, read_timeout=read_timeout
        )

    async def send(
        self,
        target: Target,
        data: bytes,
        *,
        keep_alive: bool = True,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        """Send a request already encoded (head and body, for `target`) and return once the answer's head
        arrived: `request` for callers that build their own head (a proxy relaying the app's headers)."""
        connection = self._checkout(target.origin)
        if connection is not None:
            try:
                await connection.exchange(data, keep_alive=keep_alive, read_timeout=read_timeout)
                return Response(self, target.origin, connection, read_timeout)
            except _NotSent:
                pass
        connection = await self._connect(target.origin, connect_timeout)
        await connection.exchange(data, keep_alive=keep_alive, read_timeout=read_timeout)
        return Response(self, target.origin, connection, read_timeout)

    def _checkout(self, origin: _Origin) -> _Connection | None:
        """The most recently used live idle connection, closing the expired ones on the way."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_allowed = time.monotonic() - self._expiry
        while idle and idle[0].idle_since < oldest_allowed:
            idle.popleft().close()
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        return None

    async def _connect(self, origin: _Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # httpx's trust (certifi, SSL_CERT_FILE); built once
                self._ssl.set_alpn_protocols(["http/1.1"])
            tls = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await loop.create_connection(
                    _Connection, host, port, ssl=tls, server_hostname=host if tls else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host}:{port} within {connect_timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise httpx.ConnectError(f"{host}:{port}: {exc}") from None
        return connection

    def release(self, origin: _Origin, connection: _Connection) -> None:
        """Park a connection whose answer was read to its end, or close it if it cannot be reused."""
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        if self._closed or not connection.reusable or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.active = False
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their answer is done."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
