"""The OpenAI-compatible API the app talks to: request in, response out. Decisions are the dispatcher's."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from llmroute.http import Request, Response, StreamingResponse
from llmroute.model import Priority
from llmroute.sidecar.balancer.concurrency import ConcurrencyGate
from llmroute.sidecar.dispatch import Answer, Call, Dispatcher, needed_capabilities
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.runtime import Router, RouteRuntime
from llmroute.sidecar.upstream.base import DONE
from llmroute.sidecar.upstream.errors import UpstreamError

PRIORITIES = ("critical", "normal", "batch")
_JSON = "application/json"


class SidecarApp:
    """HTTP handler for /v1/chat/completions and /v1/models."""

    def __init__(self, router: Router, dispatcher: Dispatcher, metrics: SidecarMetrics) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        try:
            if request.path == "/v1/chat/completions" or request.path == "/chat/completions":
                if request.method != "POST":
                    raise ProxyError(405, "use POST for /v1/chat/completions", "method_not_allowed")
                return await self.chat(request)
            if request.path in ("/v1/models", "/models") and request.method == "GET":
                return self.models()
            raise ProxyError(404, f"no such endpoint: {request.method} {request.path}", "not_found")
        except ProxyError as error:
            return error.response()

    def models(self) -> Response:
        """The model names of the routes this sidecar has, in OpenAI's list shape."""
        table = self.router.table
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": f"llmroute:{route.name}"}
            for model, route in sorted((table.by_model if table else {}).items())
        ]
        return Response(200, json.dumps({"object": "list", "data": data}).encode())

    def _parse(self, request: Request) -> tuple[dict[str, Any], RouteRuntime, Priority, float]:
        """The body, route, priority and deadline of a chat request; ProxyError for anything malformed."""
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "request body must be a JSON object", "invalid_request")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ProxyError(400, "'model' is required and must be a string", "invalid_request")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise ProxyError(400, "'messages' is required and must be a non-empty array", "invalid_request")
        runtime = self.router.by_model.get(model)
        if runtime is None:
            known = ", ".join(sorted(self.router.by_model)) or "none (no routing table loaded yet)"
            raise ProxyError(404, f"model {model!r} is not routed here; models: {known}", "model_not_found")
        priority = request.headers.get("x-llmroute-priority", "normal")
        if priority not in PRIORITIES:
            raise ProxyError(
                400, f"x-llmroute-priority must be one of critical, normal, batch, not {priority!r}", "invalid_priority"
            )
        policy = runtime.route.priorities[cast(Priority, priority)]
        timeout = policy.timeout
        header = request.headers.get("x-llmroute-timeout-ms")
        if header is not None:
            try:
                timeout = int(header) / 1000
            except ValueError:
                timeout = 0
            if timeout <= 0:
                raise ProxyError(
                    400, f"x-llmroute-timeout-ms must be a positive integer, not {header!r}", "invalid_timeout"
                )
        return body, runtime, cast(Priority, priority), timeout

    async def chat(self, request: Request) -> Response | StreamingResponse:
        """POST /v1/chat/completions."""
        received = time.monotonic()
        body, runtime, priority, timeout = self._parse(request)
        route = runtime.route
        call = Call(
            runtime=runtime,
            body=body,
            stream=body.get("stream") is True,
            priority=priority,
            deadline=received + timeout,
            needs=needed_capabilities(body),
        )
        gate = runtime.gates.get(priority)
        if gate is not None:  # the priority's maxConcurrency: wait for a slot, within the deadline
            try:
                await gate.acquire(call.deadline - time.monotonic())
            except TimeoutError as exc:
                self._observe(call, None, "error", received)
                raise ProxyError(
                    504, f"deadline exceeded waiting for a {priority} slot: {exc}", "deadline_exceeded"
                ) from None
        in_flight = self.metrics.child(self.metrics.in_flight, route.name)
        in_flight.inc()
        holds_stream = False  # a stream releases the slot and the gauge when the app has read it
        try:
            try:
                answer = await self.dispatcher.run(call)
            except UpstreamError as error:  # a 4xx the backend gave: the request's fault, returned as is
                self._observe(call, None, "client_error", received)
                return Response(error.status or 400, error.body or b"", self._headers(call, None, received))
            except ProxyError as error:
                self._observe(call, None, "error", received)
                error.headers = [*error.headers, *self._headers(call, None, received)]
                raise
            if answer.stream is not None:
                holds_stream = True
                return StreamingResponse(
                    200, self._relay(call, answer, received, gate), self._headers(call, answer, received)
                )
            assert answer.completion is not None
            self._observe(call, answer, "success", received)
            headers = self._headers(call, answer, received)
            headers.append(("x-llmroute-cost-usd", f"{answer.cost:.8f}"))
            return Response(200, answer.completion.body, headers)
        finally:
            if not holds_stream:
                in_flight.dec()
                if gate is not None:
                    gate.release()

    async def _relay(
        self, call: Call, answer: Answer, received: float, gate: ConcurrencyGate | None
    ) -> AsyncIterator[bytes]:
        """Forward a stream that already produced its first chunk, then its cost comment and [DONE]; a failure
        now ends it with an SSE error instead."""
        stream = answer.stream
        assert stream is not None
        runtime = call.runtime
        candidate = answer.candidate
        self.metrics.child(self.metrics.ttft, runtime.route.name, candidate.name, call.priority).observe(
            time.monotonic() - received
        )
        outcome = "abandoned"
        try:
            data = answer.first_chunk
            try:
                # Send what we have before waiting for more; once the answer is complete, nothing more is
                # awaited, so its last events go out in one write with the cost comment and [DONE].
                while not stream.complete:
                    yield data
                    data = await anext(stream, b"")
            except UpstreamError as error:
                outcome = "error"
                self.dispatcher.failed(runtime, candidate, answer.token, answer.started, error)
                message = f"backend {candidate.name} failed mid-stream: {error}"
                yield ProxyError(502, message, "stream_interrupted").sse_event()
                return
            outcome = "success"
            cost = self.dispatcher.succeeded(
                runtime, candidate, answer.token, answer.started, stream.usage, "success", answer.ttft
            )
            # Streams carry their cost as an SSE comment (clients ignore comments), before the final [DONE].
            yield data + f": x-llmroute-cost-usd={cost:.8f}\n\n".encode() + DONE
        finally:
            if outcome == "abandoned":  # the app went away mid-stream: close the attempt without a verdict
                self.dispatcher.abandoned(runtime, candidate, answer.token)
            await stream.aclose()
            self._observe(call, answer, outcome, received)
            self.metrics.child(self.metrics.in_flight, runtime.route.name).dec()
            if gate is not None:
                gate.release()

    def _observe(self, call: Call, answer: Answer | None, outcome: str, received: float) -> None:
        now = time.monotonic()
        backend = answer.candidate.name if answer is not None else "none"
        self.metrics.child(
            self.metrics.request_duration, call.runtime.route.name, backend, call.priority, outcome
        ).observe(now - received)

    def _headers(self, call: Call, answer: Answer | None, received: float) -> list[tuple[str, str]]:
        waited = call.upstream_done - call.upstream_started
        overhead = max(time.monotonic() - received - waited, 0.0)
        self.metrics.overhead.observe(overhead)
        headers = [
            ("x-llmroute-route", call.runtime.route.name),
            ("x-llmroute-attempts", str(call.attempts)),
            ("x-llmroute-overhead-ms", f"{overhead * 1000:.3f}"),
        ]
        if answer is not None:
            headers.append(("x-llmroute-backend", answer.candidate.name))
        return headers
