"""W3C trace context for routed requests: an app's `traceparent` is continued to every backend attempt, and
spans are recorded when tracing is on (the OpenTelemetry SDK of the `otel` extra, imported only then).
Passthrough and count_tokens requests get spans too when tracing is on; off, a passthrough request's
`traceparent` travels with the app's other headers unchanged, and a count_tokens request's is continued to each
backend it asks.

Tracing is on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, unless
OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none. Off, a request without `traceparent` costs one header
lookup and nothing else; one with it sends each backend attempt the same trace id, a new span id, the same
flags and `tracestate`.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Usage

if TYPE_CHECKING:
    from llmroute.sidecar.balancer.candidates import Candidate
    from llmroute.sidecar.dispatch import Answer, Call

HTTP_PROTOBUF = "http/protobuf"
"""The OTLP protocol when none is set (the OpenTelemetry specification's default)."""
GRPC = "grpc"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_rng = random.SystemRandom()
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TraceParent:
    """An incoming trace context (W3C Trace Context level 1): hex ids, flags, and `tracestate` as received."""

    trace_id: str
    span_id: str
    flags: str
    state: str | None = None

    def child(self, span_id: str) -> dict[str, str]:
        """The headers that carry this trace on to a call whose span is `span_id`."""
        headers = {TRACEPARENT: f"00-{self.trace_id}-{span_id}-{self.flags}"}
        if self.state:
            headers[TRACESTATE] = self.state
        return headers


def parse_traceparent(headers: Mapping[str, str]) -> TraceParent | None:
    """The request's trace context, or None when it has none or an invalid one (which W3C says to ignore,
    `tracestate` with it). A later version's header is read for its version-00 fields."""
    value = headers.get(TRACEPARENT)
    if value is None:
        return None
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None:
        return None
    version, trace_id, span_id, flags, rest = found.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags, headers.get(TRACESTATE) or None)


def new_span_id() -> str:
    """A random non-zero 64-bit span id in hex."""
    return f"{_rng.getrandbits(64) or 1:016x}"


class AttemptTrace(Protocol):
    """One backend attempt's part of a trace; `headers` go with the backend call."""

    headers: dict[str, str]

    def first_chunk(self, ttft: float, head: bytes) -> None:
        """A stream's first chunk arrived after `ttft` seconds; `head` is it."""

    def succeed(self, usage: Usage, cost: float, body: bytes) -> None:
        """It answered; `body` is the whole answer (JSON) or empty (a stream, whose head came first)."""

    def fail(self, error: UpstreamError) -> None:
        """It failed."""

    def abandon(self) -> None:
        """It was given up (lost a race, outlived the deadline, or the app went away)."""


class RequestTrace(Protocol):
    """One routed request's part of a trace: its attempts, and its end."""

    def attempt(self, candidate: Candidate) -> AttemptTrace:
        """A new attempt on `candidate` begins."""

    def end(self, call: Call, answer: Answer | None, outcome: str) -> None:
        """The request is over for the app (`outcome` as in llmroute_request_duration_seconds)."""


class PassthroughTrace(Protocol):
    """The spans of one passthrough request: the app's request, and the upstream call once it is made."""

    def call(self, url: str) -> dict[str, str]:
        """Start the span of the upstream call to `url` (no query string); the headers that carry the trace there."""

    def end(self, status: int | None, outcome: str) -> None:
        """The request ended with this status (None: no answer) and outcome; called once."""


class CountTrace(Protocol):
    """The spans of one count_tokens request: the app's request, and each backend call (made one at a time)."""

    def call(self, candidate: Candidate) -> dict[str, str]:
        """A call to `candidate` begins; the headers that carry the trace there."""

    def called(self, error: UpstreamError | None) -> None:
        """The call begun last answered (None) or failed with `error`."""

    def end(self, status: int | None, backend: str | None) -> None:
        """The app got `status` (None: it went away first), counted by `backend` (None: the sidecar estimated
        it, or nobody counted); a call still open is abandoned. Called once."""


class Tracer(Protocol):
    """What records spans (llmroute.sidecar.otel.OtelTracer when tracing is on)."""

    def start(self, parent: TraceParent | None, call: Call) -> RequestTrace:
        """A request span, the child of `parent` or the root of a new trace."""

    def passthrough(self, parent: TraceParent | None, method: str, path: str, api: str) -> PassthroughTrace:
        """The spans of a request relayed unchanged to its family's upstream."""

    def count_tokens(self, parent: TraceParent | None, route: str, model: str) -> CountTrace:
        """The spans of a count_tokens request for `model` on `route`."""

    def shutdown(self) -> None:
        """Export what is still buffered, then stop (blocking: run it off the event loop)."""


class _Hop:
    """An attempt of a continued trace with nothing recorded: only its headers."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def first_chunk(self, ttft: float, head: bytes) -> None:
        pass

    def succeed(self, usage: Usage, cost: float, body: bytes) -> None:
        pass

    def fail(self, error: UpstreamError) -> None:
        pass

    def abandon(self) -> None:
        pass


class Continued:
    """A request whose app sent a trace context, with tracing off: each attempt passes it on, nothing more."""

    __slots__ = ("_parent",)

    def __init__(self, parent: TraceParent) -> None:
        self._parent = parent

    def attempt(self, candidate: Candidate) -> AttemptTrace:
        return _Hop(self._parent.child(new_span_id()))

    def end(self, call: Call, answer: Answer | None, outcome: str) -> None:
        pass


class ContinuedCount:
    """A count_tokens request whose app sent a trace context, with tracing off: each call passes it on."""

    __slots__ = ("_parent",)

    def __init__(self, parent: TraceParent) -> None:
        self._parent = parent

    def call(self, candidate: Candidate) -> dict[str, str]:
        return self._parent.child(new_span_id())

    def called(self, error: UpstreamError | None) -> None:
        pass

    def end(self, status: int | None, backend: str | None) -> None:
        pass


def start(tracer: Tracer | None, headers: Mapping[str, str], call: Call) -> RequestTrace | None:
    """The request's trace: recorded (tracing on), continued only (off, with a traceparent), or none."""
    parent = parse_traceparent(headers) if TRACEPARENT in headers else None
    if tracer is not None:
        return tracer.start(parent, call)
    return Continued(parent) if parent is not None else None


def start_passthrough(
    tracer: Tracer | None, headers: Mapping[str, str], method: str, path: str, api: str
) -> PassthroughTrace | None:
    """A passthrough request's spans when tracing is on, else None (the app's headers carry its trace on)."""
    if tracer is None:
        return None
    parent = parse_traceparent(headers) if TRACEPARENT in headers else None
    return tracer.passthrough(parent, method, path, api)


def start_count_tokens(tracer: Tracer | None, headers: Mapping[str, str], route: str, model: str) -> CountTrace | None:
    """A count_tokens request's spans (tracing on), its trace continued only (off, with a traceparent), or none."""
    parent = parse_traceparent(headers) if TRACEPARENT in headers else None
    if tracer is not None:
        return tracer.count_tokens(parent, route, model)
    return ContinuedCount(parent) if parent is not None else None


class TracingUnavailable(RuntimeError):
    """Tracing is asked for by the environment but the OpenTelemetry SDK is not installed."""


def from_environment(environ: Mapping[str, str] = os.environ) -> Tracer | None:
    """The tracer the standard OTEL_* variables ask for, or None when tracing is off. The SDK itself reads
    the rest of them (service name, resource attributes, sampler, exporter headers, timeouts, batching)."""
    if not (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = (protocol or HTTP_PROTOBUF).strip().lower()
    if protocol not in (HTTP_PROTOBUF, GRPC):
        log.warning("OTLP protocol %r is not supported: traces are exported over http/protobuf", protocol)
        protocol = HTTP_PROTOBUF
    try:
        from llmroute.sidecar.otel import OtelTracer  # the optional extra: imported only when tracing is on
    except ImportError as exc:
        raise TracingUnavailable(
            f"an OTLP endpoint is set but the OpenTelemetry SDK cannot be imported ({exc}): "
            "pip install 'llmroute[otel]'"
        ) from None
    return OtelTracer.from_environment(protocol=protocol)
