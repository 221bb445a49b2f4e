"""Spans of routed requests through the OpenTelemetry SDK and its OTLP HTTP/protobuf exporter (the `otel`
extra; imported by llmroute.sidecar.tracing only when tracing is on).

A request is a SERVER span named `{gen_ai.operation.name} {model the app asked for}`; each backend attempt
is a CLIENT child of it named `{gen_ai.operation.name} {backend model}` with the GenAI attributes, so
retries, hedges and fallbacks appear as siblings. A passthrough request is a SERVER span and a CLIENT child
for its upstream call, both named by the HTTP method (the HTTP conventions' name where no route template
exists). A count_tokens request is a SERVER span named `count_tokens {model}` with a CLIENT child per backend
asked. Attributes hold names, models, paths, counts and cost: never a header, a key, a query string, a
prompt or an answer.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llmroute import __version__
from llmroute.sidecar.balancer.candidates import Candidate
from llmroute.sidecar.dispatch import Answer, Call
from llmroute.sidecar.genai import COUNT_TOKENS, OPERATION_NAMES, PROVIDER_NAMES, response_model
from llmroute.sidecar.tracing import GRPC, HTTP_PROTOBUF, TraceParent
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Usage

SERVICE_NAME = "llmroute-sidecar"
"""service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one."""


class OtelTracer:
    """Starts request spans on one TracerProvider (its own, not the global one)."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("llmroute.sidecar", __version__)

    @classmethod
    def from_environment(cls, processor: SpanProcessor | None = None, protocol: str = HTTP_PROTOBUF) -> OtelTracer:
        """A provider configured by the OTEL_* variables, exporting in batches over OTLP `protocol`
        (http/protobuf or grpc), or to `processor` (for tests and benches)."""
        resource = Resource.create()
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER(_ARG)
        provider.add_span_processor(processor or BatchSpanProcessor(_exporter(protocol)))
        return cls(provider)

    def start(self, parent: TraceParent | None, call: Call) -> RequestSpan:
        return RequestSpan(self._tracer, _context(parent), call)

    def passthrough(self, parent: TraceParent | None, method: str, path: str, api: str) -> PassthroughSpan:
        return PassthroughSpan(self._tracer, _context(parent), method, path, api)

    def count_tokens(self, parent: TraceParent | None, route: str, model: str) -> CountSpan:
        return CountSpan(self._tracer, _context(parent), route, model)

    def shutdown(self) -> None:
        self._provider.shutdown()


class RequestSpan:
    """The span of one routed request, parent of its attempts' spans."""

    __slots__ = ("_attempts", "_cost", "_span", "_winner", "call", "context", "recording", "tracer")

    def __init__(self, tracer: trace.Tracer, context: Any, call: Call) -> None:
        self.tracer = tracer
        self.call = call
        operation = OPERATION_NAMES[call.api.api]
        model = call.body.get("model")
        route = call.runtime.route.name
        self._span = tracer.start_span(
            f"{operation} {model}",
            context=context,
            kind=SpanKind.SERVER,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": str(model),
                "gen_ai.request.stream": call.stream,
                "llmroute.route": route,
                "llmroute.api": call.api.api,
                "llmroute.priority": call.priority,
            },
        )
        self.context = trace.set_span_in_context(self._span)
        self.recording = self._span.is_recording()
        self._attempts = 0
        self._cost = 0.0
        self._winner: AttemptSpan | None = None

    def attempt(self, candidate: Candidate) -> AttemptSpan:
        self._attempts += 1
        return AttemptSpan(self, candidate, self._attempts)

    def answered(self, attempt: AttemptSpan, cost: float) -> None:
        """An attempt answered: the request's answer (the last one to, after a continuation), and its cost."""
        self._winner = attempt
        self._cost += cost

    def end(self, call: Call, answer: Answer | None, outcome: str) -> None:
        span = self._span
        if self._winner is not None:
            span.set_attributes(self._winner.result)
        span.set_attribute("llmroute.attempts", call.attempts)
        span.set_attribute("llmroute.outcome", outcome)
        span.set_attribute("llmroute.cost_usd", self._cost)
        if answer is not None:
            span.set_attribute("llmroute.backend", answer.candidate.name)
            if self._winner is not None and answer.continued_from != (0, 0):  # the whole answer's, as billed
                tokens_in, tokens_out = answer.tokens()
                span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
                span.set_attribute("gen_ai.usage.output_tokens", tokens_out)
                span.set_attribute("llmroute.cost_usd", answer.cost)  # the broken attempts' part included
        if outcome not in ("success", "abandoned"):
            # The last backend error says why, where there is one (else: a deadline, a refusal, ...).
            kind = call.errors[-1][1].kind.value if call.errors else outcome
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, kind))
        span.end()


class AttemptSpan:
    """The span of one backend attempt; its span id is the parent id the backend call carries."""

    __slots__ = ("_request", "_span", "headers", "result")

    def __init__(self, request: RequestSpan, candidate: Candidate, number: int) -> None:
        self._request = request
        call = request.call
        backend = candidate.spec
        operation = OPERATION_NAMES[call.api.api]
        provider = PROVIDER_NAMES[backend.provider]
        attributes: dict[str, Any] | None = None
        if request.recording:  # an unsampled trace still needs the span's id, not its attributes
            attributes = {
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": backend.model,
                "gen_ai.request.stream": call.stream,
                "llmroute.route": call.runtime.route.name,
                "llmroute.backend": candidate.name,
                "llmroute.priority": call.priority,
                "llmroute.attempt": number,
                **_server(backend.url),
            }
        self._span = request.tracer.start_span(
            f"{operation} {backend.model}", context=request.context, kind=SpanKind.CLIENT, attributes=attributes
        )
        self.result: dict[str, Any] = {"gen_ai.provider.name": provider}
        """What the request span takes over from the attempt that answered."""
        self.headers = _carrying(self._span)

    def first_chunk(self, ttft: float, head: bytes) -> None:
        self.result["gen_ai.response.time_to_first_chunk"] = ttft
        self._response_model(head)

    def succeed(self, usage: Usage, cost: float, body: bytes) -> None:
        if body:
            self._response_model(body)
        result = self.result
        result["gen_ai.usage.input_tokens"] = usage.prompt_tokens
        result["gen_ai.usage.output_tokens"] = usage.completion_tokens
        if usage.cached_tokens:
            result["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if usage.cache_write_tokens:
            result["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
        result["llmroute.cost_usd"] = cost
        self._span.set_attributes(result)
        self._span.set_attribute("llmroute.outcome", "success")
        self._request.answered(self, cost)
        self._span.end()

    def fail(self, error: UpstreamError) -> None:
        _failed(self._span, error)
        self._span.end()

    def abandon(self) -> None:
        self._span.set_attribute("llmroute.outcome", "abandoned")
        self._span.end()

    def _response_model(self, head: bytes) -> None:
        if "gen_ai.response.model" not in self.result and (model := response_model(head)) is not None:
            self.result["gen_ai.response.model"] = model


class PassthroughSpan:
    """The spans of one passthrough request: SERVER for the app's request, CLIENT for the upstream call."""

    __slots__ = ("_client", "_method", "_server", "_tracer")

    def __init__(self, tracer: trace.Tracer, context: Any, method: str, path: str, api: str) -> None:
        attributes = {
            "http.request.method": method,
            "url.path": path,
            "llmroute.route": "passthrough",
            "llmroute.api": api,
        }
        self._server = tracer.start_span(method, context=context, kind=SpanKind.SERVER, attributes=attributes)
        self._client: trace.Span | None = None
        self._tracer = tracer
        self._method = method

    def call(self, url: str) -> dict[str, str]:
        attributes = {"http.request.method": self._method, "url.full": url, **_server(url)}
        context = trace.set_span_in_context(self._server)
        self._client = self._tracer.start_span(
            self._method, context=context, kind=SpanKind.CLIENT, attributes=attributes
        )
        return _carrying(self._client)

    def end(self, status: int | None, outcome: str) -> None:
        for span in (self._client, self._server):
            if span is None:
                continue
            if status is not None:
                span.set_attribute("http.response.status_code", status)
            span.set_attribute("llmroute.outcome", outcome)
            if outcome == "error" or (status is not None and status >= 500):
                kind = str(status) if status is not None else outcome
                span.set_attribute("error.type", kind)
                span.set_status(Status(StatusCode.ERROR, kind))
            span.end()


class CountSpan:
    """The spans of one count_tokens request: SERVER for the app's request, a CLIENT child per backend call
    (failed ones first, as the route's order tried them)."""

    __slots__ = ("_call", "_calls", "_context", "_provider", "_route", "_server", "_tracer")

    def __init__(self, tracer: trace.Tracer, context: Any, route: str, model: str) -> None:
        attributes = {"gen_ai.operation.name": COUNT_TOKENS, "gen_ai.request.model": model, "llmroute.route": route}
        self._server = tracer.start_span(
            f"{COUNT_TOKENS} {model}", context=context, kind=SpanKind.SERVER, attributes=attributes
        )
        self._context = trace.set_span_in_context(self._server)
        self._tracer = tracer
        self._route = route
        self._call: trace.Span | None = None
        self._calls = 0
        self._provider: str | None = None  # of the backend whose call is open, then of the one that counted

    def call(self, candidate: Candidate) -> dict[str, str]:
        self._calls += 1
        backend = candidate.spec
        self._provider = PROVIDER_NAMES[backend.provider]
        attributes = {
            "gen_ai.operation.name": COUNT_TOKENS,
            "gen_ai.provider.name": self._provider,
            "gen_ai.request.model": backend.model,
            "llmroute.route": self._route,
            "llmroute.backend": candidate.name,
            "llmroute.attempt": self._calls,
            **_server(backend.url),
        }
        self._call = self._tracer.start_span(
            f"{COUNT_TOKENS} {backend.model}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        return _carrying(self._call)

    def called(self, error: UpstreamError | None) -> None:
        span, self._call = self._call, None
        if span is None:
            return
        if error is None:
            span.set_attribute("llmroute.outcome", "success")
        else:
            self._provider = None
            _failed(span, error)
        span.end()

    def end(self, status: int | None, backend: str | None) -> None:
        if self._call is not None:
            self._call.set_attribute("llmroute.outcome", "abandoned")
            self._call.end()
        span = self._server
        span.set_attribute("llmroute.attempts", self._calls)
        if status is None:
            span.set_attribute("llmroute.outcome", "abandoned")
        else:
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("llmroute.outcome", "success" if status < 400 else "client_error")
            if status >= 400:
                span.set_attribute("error.type", str(status))  # a 4xx the provider gave: not a server error
            else:
                span.set_attribute("llmroute.estimate", backend is None)
        if backend is not None:
            span.set_attribute("llmroute.backend", backend)
            if self._provider is not None:
                span.set_attribute("gen_ai.provider.name", self._provider)
        span.end()


def _exporter(protocol: str) -> SpanExporter:
    """The OTLP exporter for `protocol`; each reads its endpoint, headers, TLS and timeout from OTEL_*."""
    if protocol == GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    return OTLPSpanExporter()


def _context(parent: TraceParent | None) -> Any:
    """The OpenTelemetry context of an app's trace (None: a new trace)."""
    if parent is None:
        return None
    remote = trace.SpanContext(
        int(parent.trace_id, 16),
        int(parent.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(parent.flags, 16)),
        trace_state=trace.TraceState.from_header([parent.state]) if parent.state else None,
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def _carrying(span: trace.Span) -> dict[str, str]:
    """The headers that make a call the child of `span`."""
    context = span.get_span_context()
    parent = TraceParent(
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
        f"{context.trace_flags:02x}",
        context.trace_state.to_header() or None,
    )
    return parent.child(parent.span_id)


@functools.lru_cache(maxsize=1024)
def _server(url: str) -> dict[str, Any]:
    """`server.address` and `server.port` of a backend URL (parsed once per URL)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return {}
    return {"server.address": parts.hostname, "server.port": parts.port or (443 if parts.scheme == "https" else 80)}


def _failed(span: Span, error: UpstreamError) -> None:
    """Mark a backend call's span failed: its error kind and HTTP status only, never the message (an upstream's
    message may quote the request back)."""
    span.set_attribute("error.type", error.kind.value)
    span.set_attribute("llmroute.outcome", error.kind.value)
    if error.status is not None:
        span.set_attribute("http.response.status_code", error.status)
    span.set_status(Status(StatusCode.ERROR, error.kind.value))
