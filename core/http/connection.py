"""One client connection: parses requests with httptools and answers them in order on one task."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote

import httptools

from llmroute.http import wire
from llmroute.http.body import BodyError, BodyStream
from llmroute.http.messages import Handler, Request, Response, StreamingResponse

log = logging.getLogger("llmroute.http")

_MAX_HEAD_BYTES = 64 * 1024  # request line + headers; llhttp itself sets no limit
_LINGER_SECONDS = 2.0  # after an error answer, how long unread input is drained before closing


StreamsBody = Callable[[str, Mapping[str, str]], bool]
"""Given the raw path and the headers, whether the handler reads this request's body as it arrives
(`Request.body_stream`) instead of getting it whole: for relaying uploads of any size."""

ErrorBody = Callable[[int, str, str, Mapping[str, str]], bytes]
"""Writes the server's own error answers (400, 408, 413, 431, 500, 503) given status, message, and the
path and headers of the request as far as they arrived, so the body can take the shape of that API."""


def default_error_body(status: int, message: str, path: str, headers: Mapping[str, str]) -> bytes:
    """Error body used when the server owner does not supply one."""
    return json.dumps({"error": {"message": message, "code": status}}).encode()


class ServerContext:
    """What all connections of one server share: the handler, limits, live sets and drain state."""

    __slots__ = (
        "connections",
        "draining",
        "error_body",
        "handler",
        "idle",
        "keepalive_timeout",
        "max_body_bytes",
        "read_timeout",
        "streams_body",
        "tasks",
    )

    def __init__(
        self,
        handler: Handler,
        max_body_bytes: int,
        error_body: ErrorBody,
        keepalive_timeout: float,
        read_timeout: float,
        streams_body: StreamsBody | None = None,
    ) -> None:
        self.handler = handler
        self.streams_body = streams_body
        self.max_body_bytes = max_body_bytes
        self.error_body = error_body
        self.keepalive_timeout = keepalive_timeout
        self.read_timeout = read_timeout
        self.connections: set[HTTPConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()  # one per connection that is serving requests
        self.draining = False
        self.idle = asyncio.Event()  # set once draining and nothing is left open or running

    def note_change(self) -> None:
        """Called when a connection closes or stops serving; wakes a pending shutdown when done."""
        if self.draining and not self.connections and not self.tasks:
            self.idle.set()


@dataclass(slots=True)
class _Exchange:
    """A parsed request, or a protocol error to report, waiting for its turn on the connection."""

    request: Request | None
    keep_alive: bool
    http11: bool
    head: bool = False
    error: tuple[int, str] | None = None


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing; the answer is in HTTPConnection._error."""


class HTTPConnection(asyncio.Protocol):
    """HTTP/1.1 keep-alive connection with pipelining, chunked bodies and flow control both ways."""

    _transport: asyncio.Transport

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.closed = False
        self._client: tuple[str, int] | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_stream: BodyStream | None = None  # the body being streamed to a running handler
        self._body_size = 0
        self._head_size = 0
        self._in_message = False
        self._error = (400, "malformed HTTP request")
        self._parsing = True
        self._reading = True
        self._pipeline: deque[_Exchange] = deque()
        self._active: asyncio.Task[None] | None = None
        self._handling = False  # the handler is working out an answer
        self._streaming = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._keepalive = False  # _timer is the keep-alive timer, which outlives requests (see _idle)
        self._idle_since: float | None = None  # loop time the connection began waiting for a request
        self._lost: asyncio.Future[None] | None = None  # created only when someone waits for it

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self._client = (str(peer[0]), int(peer[1]))
        self._ctx.connections.add(self)
        if self._ctx.draining:
            self._transport.close()
        else:
            self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._ctx.connections.discard(self)
        self._set_timer(None)
        self._wake_writer()
        if self._body_stream is not None:
            self._body_stream.fail(BodyError("the client closed the connection before the body ended"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._active is not None and (self._handling or self._streaming):
            # The client is gone: stop working out (and paying for) an answer nobody will read.
            self._active.cancel()
        self._ctx.note_change()

    def data_received(self, data: bytes) -> None:
        if not self._parsing:
            return  # after an error answer, input is read only to be discarded (lingering close)
        try:
            self._feed(data)
        except httptools.HttpParserError:
            self._fail(*self._error)
            return
        if self._in_message and (self._timer is None or self._keepalive) and self._active is None:
            # Part of a request: the rest must follow within read_timeout, or a slow sender holds us for ever.
            # (Requests that arrive whole in one read, nearly all of them, never set this timer.) One pipelined
            # behind a response is timed once that response is done, as we may not be reading its bytes.
            self._set_timer(self._ctx.read_timeout, self._read_timed_out)

    def _feed(self, data: bytes) -> None:
        while True:
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                # Servers may ignore Upgrade (RFC 9110 7.8): answer in HTTP/1.1 and parse on.
                data = data[int(upgrade.args[0]) :]

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        self._update_reading()

    # -- httptools callbacks ------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._idle_since = None
        if not self._keepalive:
            self._set_timer(None)
        self._in_message = True
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value)  # _grow_head, inlined: it runs for every header
        if self._head_size > _MAX_HEAD_BYTES:
            self._abort(431, "request headers too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        if previous is not None:  # Cookie's own list separator is "; " (RFC 6265 5.4, RFC 9113 8.2.3)
            text = f"{previous}{'; ' if key == 'cookie' else ', '}{text}"
        self._headers[key] = text

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        streams = self._ctx.streams_body
        if (
            streams is not None
            and (length not in (None, "0") or "transfer-encoding" in self._headers)  # a body to stream
            and streams(self._url.partition(b"?")[0].decode("latin-1"), self._headers)
        ):
            self._start_body_stream(None if length is None else int(length))
        elif length is not None and int(length) > self._ctx.max_body_bytes:
            self._abort(413, "request body too large")
        if self._headers.get("expect", "").lower() == "100-continue" and self._active is None and not self._pipeline:
            self._transport.write(wire.CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._body_stream is not None:
            self._body_stream.feed(body)
            if self._body_stream.full:
                self._update_reading()
            self._set_timer(self._ctx.read_timeout, self._body_timed_out)
            return
        self._body_size += len(body)
        if self._body_size > self._ctx.max_body_bytes:
            self._abort(413, "request body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._timer is not None and not self._keepalive:
            self._set_timer(None)
        self._in_message = False
        if self._body_stream is not None:  # its request is with the handler already
            self._body_stream.finish()
            self._body_stream = None
            return
        self._dispatch(self._exchange(b"".join(self._body)))

    def _method(self) -> str:
        return self._parser.get_method().decode("ascii")

    def _exchange(self, body: bytes, stream: BodyStream | None = None) -> _Exchange:
        """The request parsed so far, with its body (or the stream it arrives on), ready for its turn."""
        method = self._method()
        raw_path, _, raw_query = self._url.partition(b"?")
        path = raw = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path, encoding="latin-1")
        request = Request(method, path, raw_query.decode("latin-1"), self._headers, body, self._client, self, raw)
        request.body_stream = stream
        parser = self._parser
        exchange = _Exchange(request, parser.should_keep_alive(), parser.get_http_version() == "1.1", method == "HEAD")
        if self._ctx.draining:
            exchange.error = (503, "server is shutting down")
            self._parsing = False
        return exchange

    def _start_body_stream(self, length: int | None) -> None:
        """Hand the request to its handler now; its body follows on a BodyStream as it arrives."""
        stream = BodyStream(length, self._update_reading)
        self._body_stream = stream
        self._dispatch(self._exchange(b"", stream))
        self._set_timer(self._ctx.read_timeout, self._body_timed_out)

    def _body_timed_out(self) -> None:
        stream = self._body_stream
        if stream is None or not self._parsing:
            return
        if not self._reading:  # we stopped reading (the handler is behind), not the client
            self._set_timer(self._ctx.read_timeout, self._body_timed_out)
            return
        self._discard_body(BodyError(f"the request body stalled for {self._ctx.read_timeout:g} s"))

    def _discard_body(self, error: BodyError) -> None:
        """A streamed body will not be read to its end: stop parsing and close once the answer is out."""
        if self._body_stream is not None:
            self._body_stream.fail(error)
            self._body_stream = None
        self._parsing = False
        self._update_reading()

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > _MAX_HEAD_BYTES:
            self._abort(431, "request headers too large")

    def _abort(self, status: int, message: str) -> None:
        self._error = (status, message)
        raise _Abort(message)

    # -- serving ------------------------------------------------------------------------------------

    def _fail(self, status: int, message: str) -> None:
        """Stop parsing; answer `status` after the responses already owed, then close."""
        self._parsing = False
        self._dispatch(_Exchange(None, keep_alive=False, http11=True, error=(status, message)))

    def _dispatch(self, exchange: _Exchange) -> None:
        if self._active is None:
            self._active = self._loop.create_task(self._serve(exchange))
            self._ctx.tasks.add(self._active)
        else:
            self._pipeline.append(exchange)
            self._update_reading()

    async def _serve(self, exchange: _Exchange) -> None:
        """Answer `exchange` and then every pipelined one, strictly in order."""
        keep = False
        try:
            keep = await self._respond(exchange)
            while keep and self._pipeline and not self.closed:
                if self._write_paused:
                    await self._drained()
                exchange = self._pipeline.popleft()
                self._update_reading()  # its body may still be arriving (a streamed one)
                keep = await self._respond(exchange)
        finally:
            task, self._active = self._active, None
            if task is not None:
                self._ctx.tasks.discard(task)
            if not keep or not self._parsing or self._ctx.draining:
                self._close()
            elif not self._transport.is_closing():
                self._update_reading()
                if self._in_message:
                    self._set_timer(self._ctx.read_timeout, self._read_timed_out)
                else:
                    self._idle()
            self._ctx.note_change()

    async def _respond(self, exchange: _Exchange) -> bool:
        """Write one answer; return whether the connection may carry another request."""
        response = await self._call_handler(exchange)
        try:
            data, keep = self._encode(response, exchange)
        except (ValueError, UnicodeEncodeError):
            log.exception("handler returned an unencodable response")
            await _aclose(response)
            response = self._error_response(500, "internal server error", exchange.request)
            data, keep = self._encode(response, exchange)
        if self._transport.is_closing():
            await _aclose(response)
            return False
        self._transport.write(data)
        if isinstance(response, StreamingResponse):
            keep = await self._stream(response.chunks, exchange) and keep
        request = exchange.request
        if request is not None and request.body_stream is not None and not request.body_stream.received_all:
            self._discard_body(BodyError("the answer was sent before the body ended"))
        return keep

    async def _call_handler(self, exchange: _Exchange) -> Response | StreamingResponse:
        request = exchange.request
        if exchange.error is not None or request is None:
            return self._error_response(*(exchange.error or self._error), request)
        self._handling = True
        try:
            return await self._ctx.handler(request)
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.path)
            return self._error_response(500, "internal server error", request)
        finally:
            self._handling = False

    def _error_response(self, status: int, message: str, request: Request | None) -> Response:
        """The server's own error answer; without a request, for the one being parsed (as far as it arrived)."""
        if request is not None:
            path, headers = request.path, request.headers
        else:
            path, headers = self._url.partition(b"?")[0].decode("latin-1"), self._headers
        return Response(status, self._ctx.error_body(status, message, path, headers))

    def _encode(self, response: Response | StreamingResponse, exchange: _Exchange) -> tuple[bytes, bool]:
        """The bytes to write first (whole response, or a stream's head) and the keep-alive verdict."""
        keep = exchange.keep_alive and not self._ctx.draining and exchange.error is None
        request = exchange.request
        if request is not None and request.body_stream is not None and not request.body_stream.received_all:
            keep = False  # the rest of the body would have to be read first: close after this answer
        if isinstance(response, StreamingResponse):
            keep = keep and exchange.http11  # an HTTP/1.0 stream ends by closing the connection
            framing = wire.CHUNKED if exchange.http11 else b""
            framing += wire.connection_line(keep, exchange.http11)
            return wire.encode(response.status, response.content_type, response.headers, framing), keep
        body = response.body
        framing = wire.content_length(len(body), wire.connection_line(keep, exchange.http11))
        if exchange.head:
            body = b""
        return wire.encode(response.status, response.content_type, response.headers, framing, body), keep

    async def _stream(self, chunks: AsyncIterator[bytes], exchange: _Exchange) -> bool:
        """Send each chunk as soon as it is produced; return False when the stream broke off."""
        self._streaming = True
        try:
            if not exchange.head:
                async for data in chunks:
                    if self._transport.is_closing():
                        return False
                    if data:  # an empty chunk would end a chunked body early
                        self._transport.write(wire.chunk(data) if exchange.http11 else data)
                        if self._write_paused:
                            await self._drained()
        except Exception:
            # Ending without the last chunk tells the client the body is incomplete.
            log.exception("response stream failed")
            self._transport.close()
            return False
        finally:
            self._streaming = False
            await _aclose(chunks)
        if self._transport.is_closing():
            return False
        if exchange.http11:
            self._transport.write(wire.LAST_CHUNK)
        return True

    async def _drained(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark (or the client left)."""
        while self._write_paused and not self.closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- connection state ---------------------------------------------------------------------------

    def _update_reading(self) -> None:
        """Read while nothing is queued and the client keeps up with our writes (backpressure)."""
        stream = self._body_stream
        want = not self._pipeline and not self._write_paused and (stream is None or not stream.full)
        if want != self._reading and not self._transport.is_closing():
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()

    def _set_timer(self, delay: float | None, then: Callable[[], object] | None = None) -> None:
        """Run `then` (default: close) after `delay` seconds, replacing any timer set before; None: no timer."""
        if self._timer is not None:
            self._timer.cancel()
        self._keepalive = False
        self._timer = None if delay is None else self._loop.call_later(delay, then or self._transport.close)

    def _idle(self) -> None:
        """The connection waits for a request: close it after keepalive_timeout of that. The timer is not
        cancelled when a request comes, nor set again for every request: when it fires, it closes the
        connection or, if requests came meanwhile, sets itself for what is left of the current wait."""
        self._idle_since = self._loop.time()
        if not self._keepalive:
            self._set_timer(self._ctx.keepalive_timeout, self._keepalive_due)
            self._keepalive = True

    def _keepalive_due(self) -> None:
        self._timer, self._keepalive = None, False
        if self._idle_since is None:
            return  # a request is on its way in or being answered; its end calls _idle again
        left = self._idle_since + self._ctx.keepalive_timeout - self._loop.time()
        if left > 0:
            self._set_timer(left, self._keepalive_due)
            self._keepalive = True
        else:
            self._transport.close()

    def _read_timed_out(self) -> None:
        if self._parsing and self._in_message:
            self._fail(408, f"the request did not arrive in full within {self._ctx.read_timeout:g} s")

    def _close(self) -> None:
        if self.closed or self._transport.is_closing():
            return
        if self._parsing or not self._transport.can_write_eof():
            self._transport.close()
            return
        # Unread request bytes may still be on the way: closing now would reset the connection and
        # the client could lose our error answer. Half-close, discard input until EOF, then close.
        self._transport.write_eof()
        self._set_timer(_LINGER_SECONDS)
        self._update_reading()

    def drain(self) -> None:
        """Server is shutting down: close now if idle, else after the current response."""
        if self._active is None and not self._in_message:
            self._transport.close()

    async def wait_closed(self) -> None:
        """Return once the connection is closed."""
        if self.closed:
            return
        if self._lost is None:
            self._lost = self._loop.create_future()
        await asyncio.shield(self._lost)  # one waiter's cancellation must not cancel the others

    def abort(self, reset: bool = False) -> None:
        """Drop the connection now; with `reset`, send a TCP RST instead of a FIN."""
        if reset:
            sock = self._transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self._transport.abort()
        else:
            self._transport.close()


async def _aclose(source: Response | StreamingResponse | AsyncIterator[bytes]) -> None:
    """Release a stream that will not be (fully) sent, so the work behind it stops."""
    chunks = source.chunks if isinstance(source, StreamingResponse) else source
    if isinstance(chunks, AsyncGenerator):
        await chunks.aclose()
