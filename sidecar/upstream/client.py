"""One backend's HTTP client: a transport (the egress seam: proxy, CAs, connection cap), its provider's
endpoints, a codec per inbound API it can serve, and failures classified."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from llmroute.model import Api, Backend
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.upstream.base import DONE, StreamTranslator, json_object
from llmroute.sidecar.upstream.codecs import Codec, codec_for
from llmroute.sidecar.upstream.egress import Egress
from llmroute.sidecar.upstream.errors import (
    UpstreamError,
    bad_body,
    error_from_response,
    error_from_transport,
    too_large,
)
from llmroute.sidecar.upstream.neterrors import AnswerTooLarge, ReadTimeout, TransportError
from llmroute.sidecar.upstream.providers import make_provider
from llmroute.sidecar.upstream.seam import Answer, Transport, make_transport
from llmroute.sidecar.upstream.sse import SSEParser
from llmroute.sidecar.upstream.usage import Completion, Usage

__all__ = ["Completion", "CompletionStream", "Upstream"]

MIN_IDLE_TIMEOUT = 30.0  # between stream chunks: models pause while thinking or calling tools
TERMINATOR_GRACE_S = 0.5
"""Once a stream's answer and usage are in, how long its own ending ([DONE], message_stop) may take before
the answer is finalised without it."""
_TRANSPORT_ERRORS = (TransportError, TimeoutError)
log = logging.getLogger(__name__)


def _scrub(error: UpstreamError, backend: Backend) -> UpstreamError:
    """Mask the API key wherever an upstream or transport message might have echoed it."""
    return error.scrubbed(backend.api_key.reveal() if backend.api_key is not None else None)


_FORWARDED_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_FORWARDED = frozenset({"x-request-id", "request-id", "openai-processing-ms"})
_FIRST_BYTES = frozenset(b"xXrRoOaA")
"""First bytes of the forwarded names: most headers (date, server, content-*) are passed over undecoded."""


def forwarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The upstream response headers the SDKs read (request ids, rate-limit state), for the app."""
    out = []
    for raw_name, raw_value in headers:
        if not raw_name or raw_name[0] not in _FIRST_BYTES:
            continue
        name = raw_name.decode("latin-1").lower()
        if name in _FORWARDED or name.startswith(_FORWARDED_PREFIXES):
            out.append((name, raw_value.decode("latin-1")))
    return out


class Upstream:
    """One backend: owns its transport (seam.Transport, with the sidecar's egress settings and the backend's own
    CA) and the provider adapter.

    Each call takes its own `timeout` (not asyncio.timeout around the call) because the phases differ:
    a stream's timeout bounds only the wait for headers, then an idle bound applies between chunks.
    """

    __slots__ = ("_limit", "_pool", "_provider", "_urls", "backend", "codecs")

    def __init__(self, backend: Backend, egress: Egress | None = None) -> None:
        self.backend = backend
        self._provider = make_provider(backend)
        self.codecs: dict[Api, Codec] = {}
        """How each inbound API it can serve reaches it (natively or translated); others are absent."""
        for api in ("chat", "messages", "responses", "embeddings", "completions"):
            codec = codec_for(api, backend)
            if codec is not None:
                self.codecs[api] = codec
        self._urls = {api: self._provider.url(codec.upstream) for api, codec in self.codecs.items()}
        # Concurrency is the balancer's job; the transport's connection cap only bounds sockets. Timeouts are per call.
        egress = egress if egress is not None else Egress()
        self._pool: Transport = make_transport(egress, backend.ca_bundle.reveal() if backend.ca_bundle else None)
        self._limit = egress.max_answer_bytes

    def __repr__(self) -> str:
        return f"Upstream({self.backend.name!r}, provider={self.backend.provider!r}, url={self.backend.url!r})"

    def _wire(
        self,
        api: Api,
        request: dict[str, Any],
        headers: dict[str, str] | None,
        *,
        stream: bool,
        trace: dict[str, str] | None = None,
    ) -> tuple[Codec, str, dict[str, str], bytes]:
        """The codec, URL, headers and body of one call; the app's protocol headers only go to a native API,
        the trace context (`traceparent`, `tracestate`) to any."""
        codec = self.codecs.get(api)
        if codec is None:
            raise UpstreamError(FailureKind.CLIENT_ERROR, f"backend {self.backend.name} cannot serve the {api} API")
        body = codec.encode(request, self.backend.model, stream=stream)
        wire_headers = self._provider.headers
        if headers and codec.upstream == api:
            wire_headers = {**wire_headers, **headers}
        if trace:
            wire_headers = {**wire_headers, **trace}
        return codec, self._urls[api], wire_headers, body

    async def complete(
        self,
        request: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
        api: Api = "chat",
        headers: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
    ) -> Completion:
        """A non-streamed answer to `request` (of inbound `api`) within `timeout` seconds; UpstreamError on any
        failure. `headers` are the app's protocol headers for a native call (anthropic-beta and the like),
        `trace` the attempt's trace context."""
        codec, url, wire_headers, body = self._wire(api, request, headers, stream=False, trace=trace)
        response, answer = await self._post(url, wire_headers, body, timeout)
        try:
            completion = codec.decode(response.status, answer, self.backend.model, request)
        except UpstreamError as error:
            raise _scrub(error, self.backend) from None
        completion.headers = forwarded_headers(response.raw_headers)
        return completion

    async def count_tokens(
        self,
        request: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
        headers: dict[str, str] | None = None,
    ) -> tuple[bytes, list[tuple[str, str]]]:
        """The provider's own token count of a Messages request (the app's body with the backend's model), and
        the response headers for the app; UpstreamError on any failure or when the provider cannot count."""
        url = self._provider.count_tokens_url()
        if url is None:
            raise UpstreamError(FailureKind.CLIENT_ERROR, f"backend {self.backend.name} cannot count tokens")
        body = json.dumps({**request, "model": self.backend.model}, separators=(",", ":")).encode()
        wire_headers = {**self._provider.headers, **headers} if headers else self._provider.headers
        response, answer = await self._post(url, wire_headers, body, timeout)
        doc = json_object(answer)
        count = doc.get("input_tokens") if doc is not None else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise bad_body(response.status, "no input_tokens")
        return answer, forwarded_headers(response.raw_headers)

    async def _post(
        self,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[Answer, bytes]:
        """POST and read the whole answer within `timeout`; UpstreamError (key masked) unless it is a 2xx."""
        try:
            async with asyncio.timeout(timeout):
                response = await self._pool.request("POST", url, headers, body)
                answer = await response.read(self._limit)
        except TimeoutError:
            raise UpstreamError(FailureKind.TIMEOUT, f"no answer within {timeout:g}s") from None
        except AnswerTooLarge as exc:
            raise too_large(exc.limit) from None
        except TransportError as exc:
            raise _scrub(error_from_transport(exc), self.backend) from None
        self._trace(url, response.status)
        if not 200 <= response.status < 300:
            raise self._error(response, answer)
        return response, answer

    async def stream(
        self,
        request: dict[str, Any],
        *,
        timeout: float,  # noqa: ASYNC109
        api: Api = "chat",
        headers: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
    ) -> CompletionStream:
        """Start a streamed answer: returns once upstream answered 2xx with headers within `timeout`.

        After that, each read may wait up to max(timeout, MIN_IDLE_TIMEOUT) for the next chunk.
        """
        codec, url, wire_headers, body = self._wire(api, request, headers, stream=True, trace=trace)
        idle = max(timeout, MIN_IDLE_TIMEOUT)
        try:
            async with asyncio.timeout(timeout):
                response = await self._pool.request(
                    "POST", url, wire_headers, body, connect_timeout=idle, read_timeout=idle
                )
        except TimeoutError:
            raise UpstreamError(FailureKind.TIMEOUT, f"no response headers within {timeout:g}s") from None
        except TransportError as exc:
            raise _scrub(error_from_transport(exc), self.backend) from None
        self._trace(url, response.status)
        if not 200 <= response.status < 300:
            try:
                answer = await response.read(self._limit)
            except TransportError:
                answer = b""
            finally:
                response.close()
            raise self._error(response, answer)
        stream = CompletionStream(response, codec.translator(request, self.backend.model), self.backend)
        stream.headers = forwarded_headers(response.raw_headers)
        return stream

    def _error(self, response: Answer, body: bytes) -> UpstreamError:
        """The error for a non-2xx answer, key masked, with the headers the app should see if it gets it."""
        error = _scrub(error_from_response(response.status, response.headers, body), self.backend)
        error.headers = forwarded_headers(response.raw_headers)
        return error

    async def probe(self, *, timeout: float) -> bool:  # noqa: ASYNC109
        """Cheap health probe (GET the model list, never a paid completion): True on 2xx."""
        wire = self._provider.probe()
        try:
            async with asyncio.timeout(timeout):
                response = await self._pool.request("GET", wire.url, wire.headers)
                await response.read(self._limit)
        except _TRANSPORT_ERRORS:
            return False
        return 200 <= response.status < 300

    async def aclose(self) -> None:
        """Close the transport's connections."""
        await self._pool.aclose()

    def _trace(self, url: str, status: int) -> None:
        """A debug line per answered call: backend, URL (key masked, should it be in it), status; never headers."""
        if log.isEnabledFor(logging.DEBUG):
            key = self.backend.api_key.reveal() if self.backend.api_key is not None else None
            log.debug(
                "backend %s: POST %s answered %d", self.backend.name, url.replace(key, "***") if key else url, status
            )


class CompletionStream:
    """A streamed answer as app-bound SSE bytes in the inbound API's format: each item holds every event that
    one network read completed (a read is passed on as soon as it arrives, never held back to batch). The items stop at
    the end of the answer without chat's `data: [DONE]`, which is the caller's to write (after its cost comment);
    `complete` then says the answer ended properly and `usage` holds its tokens.

    A failure after the start raises UpstreamError from the iterator (after the events read before it);
    `aclose()` releases the connection.
    """

    __slots__ = ("_backend", "_error", "_parser", "_response", "_translator", "complete", "headers")

    def __init__(self, response: Answer, translator: StreamTranslator, backend: Backend) -> None:
        self._response = response
        self._translator = translator
        self._backend = backend
        self._parser = SSEParser()
        self._error: UpstreamError | None = None  # raised once the events before it have been returned
        self.complete = False
        self.headers: list[tuple[str, str]] = []
        """Upstream response headers for the app (see forwarded_headers)."""

    def __repr__(self) -> str:
        return f"CompletionStream({self._backend.name!r}, usage={self.usage!r})"

    @property
    def usage(self) -> Usage:
        """Tokens reported so far (complete once the stream has ended)."""
        return self._translator.usage

    @property
    def sequence(self) -> int:
        """The next event number, for APIs that number their events (the Responses API's sequence_number)."""
        number = getattr(self._translator, "sequence", 0)
        return number if isinstance(number, int) else 0

    @property
    def skipped(self) -> int:
        """Malformed events skipped so far."""
        return self._translator.skipped

    def limit_idle(self, seconds: float) -> None:
        """From now on, a silence longer than `seconds` between two reads interrupts the stream (TIMEOUT)."""
        self._response.set_read_timeout(seconds)

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            while not self.complete:
                if self._error is not None:
                    raise self._error
                data = await self._read()
                if data:
                    return data
        except UpstreamError as error:
            await self.aclose()
            raise _scrub(error, self._backend) from None
        await self.aclose()
        raise StopAsyncIteration

    async def _read(self) -> bytes:
        """Read one network chunk; the app-bound bytes of the events it completes (maybe none)."""
        try:
            chunk = await self._response.receive()
        except TransportError as exc:
            if not (isinstance(exc, ReadTimeout) and self._translator.settled):
                raise error_from_transport(exc) from None
            chunk = b""  # a complete answer whose upstream never sent its ending: finalised all the same
        if not chunk:
            closing = self._translator.end()  # raises if the answer was cut short
            self.complete = True
            return self._until_done(closing)
        try:
            events = self._parser.feed(chunk)
        except ValueError as exc:
            raise bad_body(200, str(exc)) from None
        parts: list[bytes] = []
        try:
            for event in events:
                parts.extend(self._translator.event(event))
        except UpstreamError as error:
            if not parts:
                raise
            self._error = error
        if self._translator.settled:
            self._response.set_read_timeout(TERMINATOR_GRACE_S)
        return self._until_done(parts)

    def _until_done(self, parts: list[bytes]) -> bytes:
        """The translated events up to [DONE], which completes the stream (events after it are dropped)."""
        if DONE in parts:
            self.complete = True
            parts = parts[: parts.index(DONE)]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        self._response.close()
