"""A simulated OTLP trace collector (HTTP/protobuf or gRPC on a real socket) that keeps what it receives, for
tests and for the sample trace in docs/observability.md. Needs the `otel` extra (opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from llmroute.http import HTTPServer, Request, Response

_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True, slots=True)
class Span:
    """One received span, ids in hex as in `traceparent`."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    """UNSET, OK or ERROR."""
    resource: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "attributes": self.attributes,
            "status": self.status,
        }


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


@dataclass
class Collector:
    """Serves OTLP traces: POST /v1/traces (`protocol` http/protobuf) or the TraceService (grpc); `spans` holds
    every span received, `bodies` every raw export request."""

    protocol: str = "http/protobuf"
    spans: list[Span] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    _server: HTTPServer | None = None
    _grpc: grpc.aio.Server | None = None
    _port: int = 0

    async def start(self, host: str = "127.0.0.1") -> None:
        if self.protocol == "grpc":
            self._grpc = grpc.aio.server()
            add_TraceServiceServicer_to_server(_Service(self), self._grpc)  # type: ignore[no-untyped-call]
            self._port = self._grpc.add_insecure_port(f"{host}:0")
            await self._grpc.start()
            return
        self._server = HTTPServer(self._handle)
        await self._server.start(host, 0)
        self._port = self._server.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown(0.0)
        if self._grpc is not None:
            await self._grpc.stop(0)

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT (the HTTP exporter adds /v1/traces)."""
        assert self._port, "not started"
        return f"http://127.0.0.1:{self._port}"

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST" or request.path != "/v1/traces":
            return Response(404, b"")
        self.record(request.body)
        body = ExportTraceServiceResponse().SerializeToString()
        return Response(200, body, content_type="application/x-protobuf")

    def record(self, body: bytes) -> None:
        """Keep one export request's body and its spans."""
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=_KINDS.get(span.kind, "UNSPECIFIED"),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status={0: "UNSET", 1: "OK", 2: "ERROR"}[span.status.code],
                            resource=resource,
                        )
                    )


class _Service(TraceServiceServicer):
    """The OTLP/gRPC TraceService, recording into a Collector."""

    def __init__(self, collector: Collector) -> None:
        self._collector = collector

    async def Export(  # capitalised: the gRPC service's method name
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ExportTraceServiceResponse:
        self._collector.record(request.SerializeToString())
        return ExportTraceServiceResponse()


@contextlib.contextmanager
def collector_thread() -> Iterator[Collector]:
    """A Collector serving from its own thread and event loop, for benches that block (callgrind's)."""
    loop = asyncio.new_event_loop()
    collector = Collector()
    loop.run_until_complete(collector.start())
    thread = threading.Thread(target=loop.run_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        asyncio.run_coroutine_threadsafe(collector.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
