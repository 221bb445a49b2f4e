"""HTTP/1.1 client for backend calls: an O(1) keep-alive pool per origin, answers parsed by httptools.

httpx's default transport (httpcore) re-checks every pooled connection, with a poll() each, on every
request: ~70% of the sidecar's CPU under load. This pool pops the most recently used idle connection
instead and checks its age only then. Calls go direct or through the egress proxy (an HTTP CONNECT or SOCKS5
tunnel, or absolute-form requests for http through an HTTP proxy), at most `max_connections` open per origin.
Failures are raised as the project's own classes (neterrors), which `errors.error_from_transport` classifies.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httptools
import httpx

from llmroute.sidecar.upstream.egress import Egress, Proxy
from llmroute.sidecar.upstream.neterrors import (
    AnswerTooLarge,
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    PoolTimeout,
    ProxyError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
    UnsupportedProtocol,
    WriteTimeout,
)
from llmroute.sidecar.upstream.tunnel import connect_via

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
    """Split an http(s) URL; UnsupportedProtocol for anything else."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsupportedProtocol(f"invalid URL: {exc}") from None
    scheme = parsed.scheme
    if scheme not in _DEFAULT_PORTS or not parsed.host:
        raise UnsupportedProtocol(f"not an http(s) URL: {scheme or 'no scheme'}")
    host = parsed.raw_host
    if b":" in host:  # IPv6 literal
        host = b"[" + host + b"]"
    if parsed.port is not None:
        host += b":%d" % parsed.port
    origin = (scheme, parsed.raw_host.decode("ascii"), parsed.port or _DEFAULT_PORTS[scheme])
    return Target(origin, parsed.raw_path, host)


class StreamedBody(Protocol):
    """A request body sent on as it arrives (a relayed upload): its Content-Length, None when chunked."""

    length: int | None

    def __aiter__(self) -> AsyncIterator[bytes]: ...


def request_head(
    method: str,
    target: Target,
    headers: Mapping[str, str],
    body: bytes | StreamedBody,
    fixed: bytes = _FIXED_HEADERS,
    via: _Via | None = None,
) -> bytes:
    """The request line and headers (`fixed` first: ours for backend calls, none when relaying an app's own;
    absolute-form with the proxy's credentials when `via` is a proxy's); LocalProtocolError if a header could
    split the request."""
    lines = [method.encode("ascii"), b" ", target.path, b" HTTP/1.1\r\nhost: ", target.host, b"\r\n", fixed]
    if via is not None:
        lines[2] = via.prefix + target.path
        lines.append(via.extra)
    for name, value in headers.items():
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2]:
            raise LocalProtocolError(f"header {name!r} holds a line break")
        try:
            lines.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            raise LocalProtocolError(f"header {name!r} is not latin-1") from None
    if isinstance(body, bytes):
        if body or method == "POST":
            lines.append(b"content-length: %d\r\n" % len(body))
    elif body.length is not None:
        lines.append(b"content-length: %d\r\n" % body.length)
    else:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


class _Unsolicited(Exception):
    """Bytes after the answer we asked for: the connection is out of step and must not be reused."""


@dataclass(frozen=True, slots=True)
class _Via:
    """How one origin is reached: directly, or through a proxy (`tunnel` for https and for any SOCKS proxy; else
    absolute-form with `prefix` = scheme://host:port before the path and `extra` = the proxy's credentials header)."""

    proxy: Proxy
    tunnel: bool = False
    prefix: bytes = b""
    extra: bytes = b""


_UNKNOWN: Any = object()  # an origin's _Via not looked up yet (None means direct)


class _NotSent(ReadError):
    """The connection was closed before the request was written: it provably never reached the server."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the socket, httptools' parser, and the state of the current answer."""

    def __init__(self, gone: Callable[[], None] | None = None) -> None:
        self.gone = gone  # called once when the connection closes, whoever closes it (frees its slot in the pool)
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
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
        self.error: TransportError | None = None

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
            self._fail(RemoteProtocolError(f"malformed answer from upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._gone()
        self._wake_writer()
        if not self.active or self.complete or self.error is not None:
            return
        if exc is not None:
            self._fail(ReadError(f"connection lost: {exc}" if str(exc) else "connection reset"))
        elif self.head_done and not self.delimited:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif self.head_done:
            self._fail(RemoteProtocolError("upstream closed the connection in the middle of the body"))
        else:
            self._fail(RemoteProtocolError("upstream closed the connection without an answer"))

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

    def _fail(self, error: TransportError) -> None:
        self.error = error
        self._wake()
        self.close()

    def _time_out(self, waiter: asyncio.Future[None], read_timeout: float) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(f"no data from upstream within {read_timeout:g}s"))

    async def _wait(self, read_timeout: float | None) -> None:
        """Until the parser has news (or the connection failed); ReadTimeout after `read_timeout`."""
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
        self._gone()
        if self.transport is not None:
            self.transport.close()

    def _gone(self) -> None:
        gone, self.gone = self.gone, None
        if gone is not None:
            gone()

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

    async def exchange(
        self, data: bytes, *, keep_alive: bool, read_timeout: float | None, body: StreamedBody | None = None
    ) -> None:
        """Send a request (`data`, then `body` as it arrives) and wait for the answer's status and headers
        (closing the connection on failure)."""
        self._begin(keep_alive=keep_alive)
        assert self.transport is not None
        try:
            if self.closed:
                raise _NotSent("connection closed before the request was sent")
            self.transport.write(data)
            if body is not None:
                await self._send_body(self.transport, body, read_timeout)
            while not self.head_done:
                if self.error is not None:
                    raise self.error
                await self._wait(read_timeout)
        except BaseException:
            self.close()
            raise

    async def _send_body(self, transport: asyncio.Transport, body: StreamedBody, stall: float | None) -> None:
        """Write `body` as it arrives (chunked when its length is unknown), at the pace the upstream reads it
        (WriteTimeout if it takes none of it for `stall` seconds); stop early if the answer or a failure comes first
        (the connection is then not reused)."""
        chunked = body.length is None
        async for piece in body:
            if self.head_done or self.error is not None or self.closed:
                self.keep_alive = False  # the rest of the body was never sent: this connection is done
                return
            if piece:
                transport.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                while self._write_paused and not self.closed:
                    self._drain_waiter = asyncio.get_running_loop().create_future()
                    try:
                        await asyncio.wait_for(self._drain_waiter, stall)
                    except TimeoutError:
                        raise WriteTimeout(f"upstream took none of the request body for {stall:g}s") from None
        if chunked:
            transport.write(b"0\r\n\r\n")

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
        """The next piece of the body as it arrived (ReadTimeout after the read timeout); b"" at its end."""
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

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; AnswerTooLarge (and the connection closed) once it passes `limit` bytes."""
        parts = []
        size = 0
        while chunk := await self.receive():
            size += len(chunk)
            if limit is not None and size > limit:
                self.close()
                raise AnswerTooLarge(limit)
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
    """HTTP/1.1 keep-alive connections per origin, reused last-in first-out, at most `max_connections` open
    per origin (a call beyond that waits, within its connect timeout, for one to be freed).

    No background task: a connection idle longer than `keepalive_expiry` is closed when a checkout
    finds it, and one the server closed is skipped.
    """

    def __init__(
        self,
        *,
        max_idle: int = MAX_IDLE,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        ssl_context: ssl.SSLContext | None = None,
        egress: Egress | None = None,
    ) -> None:
        self._egress = egress if egress is not None else Egress()
        self._idle: dict[_Origin, deque[_Connection]] = {}
        self._open: dict[_Origin, int] = {}
        self._waiting: dict[_Origin, deque[asyncio.Future[_Connection | None]]] = {}
        self._vias: dict[_Origin, _Via | None] = {}
        self._targets: dict[str, Target] = {}
        self._max_idle = max_idle
        self._max_open = self._egress.max_connections
        self._expiry = keepalive_expiry
        self._ssl = ssl_context
        self._closed = False

    def __repr__(self) -> str:
        return f"Pool(idle={sum(len(idle) for idle in self._idle.values())}, open={sum(self._open.values())})"

    def open_connections(self, origin: _Origin) -> int:
        """Connections open to `origin` now (in use or idle)."""
        return self._open.get(origin, 0)

    def _remember(self, url: str) -> Target:
        """Parse a URL the first time it is asked for (backend URLs are few and fixed)."""
        target = self._targets[url] = parse_target(url)
        return target

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
            target = self._remember(url)
        # The coroutine of `send` itself, not one awaiting it: no extra frame on every backend call.
        return self.send(method, target, headers, body, connect_timeout=connect_timeout, read_timeout=read_timeout)

    async def send(
        self,
        method: str,
        target: Target,
        headers: Mapping[str, str],
        body: bytes | StreamedBody = b"",
        *,
        fixed: bytes = _FIXED_HEADERS,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        """`request` for an already parsed target and with the fixed headers given (b"" for a proxy relaying
        an app's own headers); LocalProtocolError before anything is sent if a header could split the request."""
        origin = target.origin
        via = self._vias.get(origin, _UNKNOWN)
        if via is _UNKNOWN:
            via = self._vias[origin] = self._via(origin)
        data = request_head(method, target, headers, body, fixed, via)
        streamed = None
        if isinstance(body, bytes):
            data += body
        else:
            streamed = body
        keep_alive = True
        for name, value in headers.items():  # a loop, not all(genexpr): no generator on every backend call
            if name.lower() == "connection" and value.lower() == "close":
                keep_alive = False
        while True:
            connection = self._checkout(origin)
            if connection is None:
                connection = await self._acquire(origin, via, connect_timeout)
            try:
                await connection.exchange(data, keep_alive=keep_alive, read_timeout=read_timeout, body=streamed)
            except _NotSent:
                continue  # a reused connection found closed: the next idle one, or a new one
            return Response(self, origin, connection, read_timeout)

    def _via(self, origin: _Origin) -> _Via | None:
        """How calls to `origin` go: None for direct."""
        scheme, host, port = origin
        proxy = self._egress.proxy_for(scheme, host, port)
        if proxy is None:
            return None
        if scheme == "https" or proxy.socks:
            return _Via(proxy, tunnel=True)
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        extra = f"Proxy-Authorization: {proxy.authorization}\r\n".encode() if proxy.authorization else b""
        return _Via(proxy, prefix=f"http://{authority}".encode("ascii"), extra=extra)

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

    async def _acquire(self, origin: _Origin, via: _Via | None, connect_timeout: float | None) -> _Connection:
        """A new connection when the cap allows one, else the first connection (or slot) another call frees;
        PoolTimeout if none is freed within `connect_timeout`."""
        if self._open.get(origin, 0) >= self._max_open:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(origin, deque()).append(waiter)
            try:
                async with asyncio.timeout(connect_timeout):
                    handed = await waiter
            except BaseException as exc:
                if waiter.done() and not waiter.cancelled():  # handed over as we gave up: pass it on
                    got = waiter.result()
                    if got is None:
                        self._free(origin)
                    else:
                        self.release(origin, got)
                if isinstance(exc, TimeoutError):
                    busy = f"all {self._max_open} connections to {origin[1]}:{origin[2]} stayed busy"
                    raise PoolTimeout(f"{busy} for {connect_timeout:g}s") from None
                raise
            if handed is not None:
                return handed
        else:
            self._open[origin] = self._open.get(origin, 0) + 1  # the slot handed over is already counted
        try:
            return await self._connect(origin, via, connect_timeout)
        except BaseException:
            self._free(origin)
            raise

    def _free(self, origin: _Origin) -> None:
        """A connection to `origin` closed: its slot goes to the first live waiter, else the count drops."""
        if not self._hand_over(origin, None):
            self._open[origin] -= 1

    def _hand_over(self, origin: _Origin, connection: _Connection | None) -> bool:
        """Give the first call still waiting for `origin` this connection (None: a free slot); False if none waits."""
        waiting = self._waiting.get(origin)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def _connect(self, origin: _Origin, via: _Via | None, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = self._egress.ssl_context()  # built once per pool
            tls = self._ssl
        loop = asyncio.get_running_loop()
        proxy = via.proxy if via is not None else None
        gone = _Slot(self, origin)
        try:
            async with asyncio.timeout(connect_timeout):
                if via is None:
                    _, connection = await loop.create_connection(
                        lambda: _Connection(gone), host, port, ssl=tls, server_hostname=host if tls else None
                    )
                else:
                    proxy_tls = self._egress.ssl_context() if via.proxy.tls else None  # the sidecar's own CAs
                    if via.tunnel:
                        connection = _Connection(gone)
                        await connect_via(via.proxy, proxy_tls, host, port, connection, tls)
                    else:
                        try:
                            _, connection = await loop.create_connection(
                                lambda: _Connection(gone),
                                via.proxy.host,
                                via.proxy.port,
                                ssl=proxy_tls,
                                server_hostname=via.proxy.host if proxy_tls else None,
                            )
                        except OSError as exc:
                            raise ProxyError(f"proxy {via.proxy}: {exc}") from None
        except TimeoutError:
            where = f"{host}:{port}" + (f" via proxy {proxy}" if proxy is not None else "")
            raise ConnectTimeout(f"no connection to {where} within {connect_timeout:g}s") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise ConnectError(f"{host}:{port}: {exc}") from None
        gone.armed = True
        return connection

    def release(self, origin: _Origin, connection: _Connection) -> None:
        """Park a connection whose answer was read to its end (or hand it to a call waiting for one), or close
        it if it cannot be reused."""
        if self._closed or not connection.reusable:
            connection.close()
            return
        connection.active = False
        if self._waiting.get(origin) and self._hand_over(origin, connection):
            return
        idle = self._idle.get(origin)
        if idle is None:
            idle = self._idle[origin] = deque()
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        """Close the idle connections; those in use close when their answer is done."""
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


class _Slot:
    """A connection's `gone` callback: frees its slot in the pool, once the connection was fully made (until
    then, a failed connect frees the slot itself)."""

    __slots__ = ("armed", "origin", "pool")

    def __init__(self, pool: Pool, origin: _Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.armed = False

    def __call__(self) -> None:
        if self.armed:
            self.armed = False
            self.pool._free(self.origin)
