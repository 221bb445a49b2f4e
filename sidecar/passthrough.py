"""Passthrough (Istio's ALLOW_ANY): a request for a model no route names, or to a path the sidecar does not
serve, is relayed unchanged to its API family's upstream with the app's own credentials, as a proxy must
(hop-by-hop headers dropped, Host rewritten, the answer relayed as it arrives). `--passthrough off` (the
local default) leaves such requests to the app's 404."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from llmroute.http import BodyError, Request, Response, StreamingResponse
from llmroute.model import Priority
from llmroute.model.schema import PRIORITIES
from llmroute.sidecar.accesslog import ABANDONED, AccessLog
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.inbound import BY_PATH
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.policy.admission import Admission
from llmroute.sidecar.policy.ledger import Reservation
from llmroute.sidecar.tracing import PassthroughTrace, Tracer, start_passthrough
from llmroute.sidecar.upstream.egress import Egress
from llmroute.sidecar.upstream.errors import Family
from llmroute.sidecar.upstream.neterrors import (
    LocalProtocolError,
    TransportError,
    TransportTimeout,
    UnsupportedProtocol,
)
from llmroute.sidecar.upstream.seam import Answer, make_transport
from llmroute.sidecar.upstream.transport import Target, parse_target

log = logging.getLogger("llmroute.sidecar.passthrough")

ROUTE = "passthrough"
"""The route label of passthrough traffic in the metrics."""
OTHER = "other"
"""The api label of paths outside the inbound table (their paths hold ids: no label of their own)."""
CONNECT_TIMEOUT = 10.0
IDLE_TIMEOUT = 600.0
"""Longest wait for the upstream's head or its next body piece: the SDKs' own default timeout (600 s)."""
FAMILIES: tuple[Family, ...] = ("openai", "anthropic")

# RFC 9110 7.6.1: meant for one connection, never relayed. Host and the body framing are written anew,
# `expect` was answered by the sidecar's server, and x-llmroute-* headers are addressed to the sidecar.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length", "expect"}
)
_REQUEST_PREFIXES = ("proxy-", "x-llmroute-")
# HEAD answers have no body to read (the pool would wait for one); CONNECT would make the sidecar a tunnel.
_NOT_RELAYED = frozenset({"HEAD", "CONNECT"})
# Answers: the sidecar's server writes its own framing and Date.
_RESPONSE_DROPPED = _HOP_BY_HOP | {"date"}


@dataclass(frozen=True, slots=True)
class PassthroughPolicy:
    """Whether this sidecar may pass requests through at all: an LLMPolicy's `passthrough: Deny` becomes
    `PassthroughPolicy(allow=False, source="LLMPolicy ns/name")`, set on `Passthrough.policy` whenever the
    sidecar's policies change (llmroute.sidecar.main); without such a policy every request is allowed."""

    allow: bool = True
    source: str = ""
    """Who decided, named in the 403 the app gets (never a secret)."""


def parse_upstreams(value: str) -> dict[Family, str]:
    """`--passthrough`: `off`, or `openai=URL,anthropic=URL` (either may be left out: that family then gets
    the 404 as with off). Each URL is what the SDK's base URL would be (OPENAI_BASE_URL includes /v1,
    ANTHROPIC_BASE_URL does not). ValueError for anything else."""
    if value.strip() == "off":
        return {}
    upstreams: dict[Family, str] = {}
    for item in value.split(","):
        name, sep, url = item.strip().partition("=")
        family = next((f for f in FAMILIES if f == name.strip()), None)
        if family is None or not sep:
            raise ValueError(f"expected off or openai=URL,anthropic=URL, got {item.strip()!r}")
        url = url.strip().rstrip("/")
        try:
            target = parse_target(url)
        except UnsupportedProtocol as exc:
            raise ValueError(f"{family}: {exc}") from None
        if b"?" in target.path:
            raise ValueError(f"{family}: a passthrough URL takes no query string: {url}")
        upstreams[family] = url
    return upstreams


def family_of(path: str, headers: Mapping[str, str]) -> Family:
    """The API family of a request to a path the sidecar does not serve: Anthropic's for /v1/messages* and
    for any call that carries `anthropic-version` (every Anthropic SDK call does), else OpenAI's."""
    if path.startswith(("/v1/messages", "/messages")) or "anthropic-version" in headers:
        return "anthropic"
    return "openai"


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> set[str]:
    """The header names a Connection header lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for name, value in headers if name == "connection" for token in value.split(",")}


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The app's headers as the upstream gets them: all but the hop-by-hop ones (credentials included)."""
    named = _connection_tokens(headers.items())
    return {
        name: value
        for name, value in headers.items()
        if name not in _HOP_BY_HOP and name not in named and not name.startswith(_REQUEST_PREFIXES)
    }


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The upstream's answer headers as the app gets them, repeated ones (set-cookie) kept apart."""
    decoded = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in raw]
    named = _connection_tokens(decoded)
    return [
        (name, value)
        for name, value in decoded
        if name not in _RESPONSE_DROPPED and name not in named and not name.startswith("proxy-")
    ]


class Passthrough:
    """The passthrough upstreams by family, one keep-alive pool for them (with the sidecar's egress settings:
    proxy, CAs, connection cap), and the policy that may deny."""

    def __init__(
        self,
        upstreams: Mapping[Family, str],
        metrics: SidecarMetrics,
        egress: Egress | None = None,
        access: AccessLog | None = None,
        tracer: Tracer | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._bases: dict[Family, Target] = {family: parse_target(url) for family, url in upstreams.items()}
        self._schemes = {family: urlsplit(url).scheme for family, url in upstreams.items()}
        self._pool = make_transport(egress if egress is not None else Egress())
        self._metrics = metrics
        self._access = access
        self._tracer = tracer
        self._admission = admission
        """The LLMPolicies' rate limits count passthrough requests too (llmroute.sidecar.policy)."""
        self.policy = PassthroughPolicy()

    @staticmethod
    def streams(path: str, headers: Mapping[str, str]) -> bool:
        """Whether a request's body is relayed as it arrives rather than read whole first: on every path outside
        the inbound table (uploads of any size); inbound paths need the whole JSON to find the model."""
        return (unquote(path, encoding="latin-1") if "%" in path else path) not in BY_PATH

    def serves(self, family: Family) -> bool:
        """Whether requests of `family` have an upstream to go to."""
        return family in self._bases

    def target(self, family: Family, raw_path: str, query: str) -> Target:
        """Where a request goes: the family's base URL plus the path relative to the SDK's base URL (OpenAI
        SDKs send /v1/x for base .../v1; Anthropic SDKs send /v1/x for a base without it), query kept."""
        base = self._bases[family]
        if family == "openai" and (raw_path == "/v1" or raw_path.startswith("/v1/")):
            raw_path = raw_path[3:]
        path = base.path.rstrip(b"/") + raw_path.encode("latin-1")
        if query:
            path += b"?" + query.encode("latin-1")
        return replace(base, path=path)

    async def forward(self, request: Request, family: Family, api: str = OTHER) -> Response | StreamingResponse:
        """Relay `request` to `family`'s upstream; its answer comes back as it arrives (status, headers,
        body, SSE or not, errors included). Failures of our own are in the family's error shape. `api`
        labels the metrics: the inbound API of a listed path, else OTHER."""
        received = time.monotonic()
        spans = start_passthrough(self._tracer, request.headers, request.method, request.path, api)
        if request.method in _NOT_RELAYED:
            self._count(request, family, api, received, spans, None, "405", "client_error")
            refused = f"passthrough does not relay {request.method} requests"
            return ProxyError(405, refused, "method_not_allowed").response(family)
        if not self.policy.allow:
            self._count(request, family, api, received, spans, None, "403", "client_error")
            denied = f"passthrough of {request.method} {request.path} is denied by {self.policy.source or 'policy'}"
            return ProxyError(403, denied, "passthrough_denied").response(family)
        try:
            reservation = self._admit(request)
        except ProxyError as error:
            self._count(request, family, api, received, spans, None, str(error.status), "client_error")
            return error.response(family)
        count = functools.partial(self._count, request, family, api, received, spans, reservation)
        target = self.target(family, request.raw_path or request.path, request.query)
        host = target.host.decode("latin-1")
        headers = request_headers(request.headers)
        if spans is not None:  # the upstream call is the child of the sidecar's span, not of the app's
            url = f"{self._schemes[family]}://{host}{target.path.partition(b'?')[0].decode('latin-1')}"
            headers.update(spans.call(url))
        in_flight = self._metrics.child(self._metrics.in_flight, ROUTE)
        in_flight.inc()
        relay = None  # once the answer is handed to a relay, the relay ends the request's accounting
        try:
            try:
                upstream = await self._pool.send(
                    request.method,
                    target,
                    headers,
                    request.body if request.body_stream is None else request.body_stream,
                    fixed=b"",
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=IDLE_TIMEOUT,
                )
            except LocalProtocolError as exc:
                raise ProxyError(400, f"cannot relay this request: {exc}", "invalid_request") from None
            except BodyError as exc:  # the app's upload broke off; the upstream call was closed
                raise ProxyError(408, f"the request body did not arrive in full: {exc}", "request_timeout") from None
            except TransportTimeout as exc:
                raise ProxyError(504, f"passthrough upstream {host} timed out: {exc}", "upstream_timeout") from None
            except TransportError as exc:
                log.warning("passthrough to %s failed: %s", host, exc)
                raise ProxyError(502, f"passthrough upstream {host} failed: {exc}", "upstream_unavailable") from None
            answer_headers = response_headers(upstream.raw_headers)
            status = upstream.status
            if upstream.arrived:  # the whole answer is here (most JSON answers): send it with its length
                body = await upstream.read()
                count(str(status), _outcome(status))
                return Response(status, body, answer_headers, content_type="")

            def ended(outcome: str) -> None:
                in_flight.dec()
                count(str(status), outcome)

            relay = _Relay(request, upstream, host, ended)
            return StreamingResponse(status, relay, answer_headers, content_type="")
        except ProxyError as error:
            count(str(error.status), "error" if error.status >= 500 else "client_error")
            return error.response(family)
        except asyncio.CancelledError:  # the app left before the answer: the server stops the handler
            count("none", "abandoned")
            raise
        finally:
            if relay is None:
                in_flight.dec()

    def _count(
        self,
        request: Request,
        family: Family,
        api: str,
        received: float,
        spans: PassthroughTrace | None,
        reservation: Reservation | None,
        status: str,
        outcome: str,
    ) -> None:
        """A passthrough request has ended: one request on the rate limits, its metrics, its spans and its
        access-log line (the upstream's family as the backend; an unlisted path's api is `passthrough`)."""
        if reservation is not None:
            reservation.settle(0.0, 0)
        if spans is not None:
            spans.end(int(status) if status.isdigit() else None, outcome)
        metrics = self._metrics
        metrics.child(metrics.passthrough, family, status).inc()
        duration = metrics.child(metrics.request_duration, ROUTE, family, "none", outcome, api)
        duration.observe(time.monotonic() - received)
        if self._access is not None:
            code = int(status) if status.isdigit() else ABANDONED
            logged_api = ROUTE if api == OTHER else api  # a path outside the inbound table: api `passthrough`
            self._access.write(
                request, received, status=code, outcome=outcome, api=logged_api, route=ROUTE, backend=family
            )

    def _admit(self, request: Request) -> Reservation | None:
        """One request on the LLMPolicies' requests-per-minute limits (None while no policy applies); the 429,
        or a 400 for a priority header that is not one, as ProxyError."""
        admission = self._admission
        if admission is None or not admission.active:
            return None
        priority = request.headers.get("x-llmroute-priority", "normal")
        if priority not in PRIORITIES:
            raise ProxyError(400, f"x-llmroute-priority must be one of {', '.join(PRIORITIES)}, not {priority!r}",
                             "invalid_priority")  # fmt: skip
        return admission.admit_unrouted(cast(Priority, priority))

    async def aclose(self) -> None:
        """Close the idle upstream connections."""
        await self._pool.aclose()


class _Relay(AsyncGenerator[bytes, None]):
    """The upstream's body, each piece as it arrives, for the app's connection. If the upstream breaks off, so
    does the app's connection (a complete-looking answer would be a lie); if the app leaves, the upstream call
    is closed. A class rather than a generator function: the server closes a stream it cannot send (the
    connection closed as the answer was handed over, or at shutdown) before its first step, and a generator
    that never started would skip its cleanup."""

    def __init__(self, request: Request, upstream: Answer, host: str, ended: Callable[[str], None]) -> None:
        self._request = request
        self._upstream: Answer | None = upstream
        self._host = host
        self._ended = ended

    async def asend(self, value: None) -> bytes:
        upstream = self._upstream
        if upstream is None:
            raise StopAsyncIteration
        try:
            piece = await upstream.receive()
        except TransportError as exc:
            log.warning("passthrough answer from %s broke off: %s", self._host, exc)
            self._request.abort()
            self._end("error")
            raise StopAsyncIteration from None
        if not piece:
            self._end(_outcome(upstream.status))
            raise StopAsyncIteration
        return piece

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        self._end("abandoned")
        raise typ if val is None else val

    async def aclose(self) -> None:
        self._end("abandoned")

    def _end(self, outcome: str) -> None:
        """Close the upstream call and account for the request, once."""
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close()
            self._ended(outcome)


def _outcome(status: int) -> str:
    return "success" if status < 400 else "client_error" if status < 500 else "error"
