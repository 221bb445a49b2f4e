"""The APIs the app talks to (a table of inbound modules, by path): request in, response out, every error in
the shape of the app's API. Decisions are the dispatcher's."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, cast

from llmroute.http import Request, Response, StreamingResponse
from llmroute.model import Priority
from llmroute.model.schema import PRIORITIES
from llmroute.sidecar.accesslog import ABANDONED, AccessLog, log_call, policy_field
from llmroute.sidecar.balancer.concurrency import ConcurrencyGate
from llmroute.sidecar.continuation import Continuation, can_continue
from llmroute.sidecar.count_tokens import count_tokens
from llmroute.sidecar.dispatch import Answer, Call, Dispatcher
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.inbound import BY_PATH, COUNT_TOKENS, Inbound, Parsed
from llmroute.sidecar.inbound.base import estimate_tokens
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.passthrough import OTHER, Passthrough, family_of
from llmroute.sidecar.policy.admission import Admission
from llmroute.sidecar.runtime import Router, RouteRuntime
from llmroute.sidecar.tracing import TRACEPARENT, Tracer, start_count_tokens
from llmroute.sidecar.tracing import start as start_trace
from llmroute.sidecar.upstream.base import json_loads
from llmroute.sidecar.upstream.errors import UpstreamError

_JSON = "application/json"


class SidecarApp:
    """HTTP handler for the inbound APIs (llmroute.sidecar.inbound) and /v1/models; with `passthrough`, the
    requests no route names go to the app's own upstream (llmroute.sidecar.passthrough) instead of a 404; with
    `tracer`, routed requests are traced (llmroute.sidecar.tracing)."""

    def __init__(
        self,
        router: Router,
        dispatcher: Dispatcher,
        metrics: SidecarMetrics,
        passthrough: Passthrough | None = None,
        access: AccessLog | None = None,
        admission: Admission | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.passthrough = passthrough
        self.access = access
        """The access log (None: --access-log off); passthrough requests are logged by the passthrough."""
        self.admission = admission
        """The LLMPolicies' admission filter (llmroute.sidecar.policy); inactive while no policy applies."""
        self.tracer = tracer
        """Exports spans when tracing is on (None: off; an app's traceparent is continued either way)."""

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        received = time.monotonic()
        api = BY_PATH.get(request.path)
        if api is not None and request.method == "POST":
            try:
                if api is COUNT_TOKENS:
                    return await self.count_tokens(request, received)
                return await self.serve(api, request, received)
            except ProxyError as error:  # refused before dispatch (serve logs what it dispatched)
                return self._answered(request, api.api, received, error.response(api.family), error.code)
        if request.path in ("/v1/models", "/models") and request.method == "GET":
            models = self.models(anthropic="anthropic-version" in request.headers)
            return self._answered(request, "models", received, models)
        # Not in the inbound table (the table lists POSTs: GET /v1/chat/completions/{id} and the like are not).
        label: str
        if api is not None:
            family, label = api.family, api.api
        else:
            family, label = family_of(request.path, request.headers), OTHER
        if self.passthrough is not None and self.passthrough.serves(family):
            return await self.passthrough.forward(request, family, label)
        if api is not None:
            refusal = ProxyError(405, f"use POST for {request.path}", "method_not_allowed")
        else:
            refusal = ProxyError(404, f"no such endpoint: {request.method} {request.path}", "not_found")
        return self._answered(request, label, received, refusal.response(family), refusal.code)

    def _answered(
        self,
        request: Request,
        api: str,
        received: float,
        response: Response | StreamingResponse,
        error: str | None = None,
    ) -> Response | StreamingResponse:
        """`response`, logged: a request the sidecar answered itself, without a backend (a refusal, the model
        list, a token count)."""
        if self.access is not None:
            outcome = "success" if response.status < 400 else "client_error" if response.status < 500 else "error"
            refused_by = next((v for k, v in response.headers if k == "x-llmroute-policy"), "")  # an LLMPolicy 429
            self.access.write(
                request,
                received,
                status=response.status,
                outcome=outcome,
                api=api,
                error=error,
                policy=policy_field(refused_by),
            )
        return response

    def models(self, *, anthropic: bool) -> Response:
        """The model names of the routes this sidecar has, in OpenAI's list shape or, for the Anthropic SDK
        (which sends anthropic-version), in Anthropic's."""
        table = self.router.table
        routed = sorted((table.by_model if table else {}).items())
        if anthropic:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            models = [
                {"type": "model", "id": model, "display_name": f"{model} (llmroute:{route.name})", "created_at": stamp}
                for model, route in routed
            ]
            first, last = (models[0]["id"], models[-1]["id"]) if models else (None, None)
            page = {"data": models, "has_more": False, "first_id": first, "last_id": last}
            return Response(200, json.dumps(page).encode())
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": f"llmroute:{route.name}"}
            for model, route in routed
        ]
        return Response(200, json.dumps({"object": "list", "data": data}).encode())

    async def count_tokens(self, request: Request, received: float) -> Response | StreamingResponse:
        """POST /v1/messages/count_tokens (llmroute.sidecar.count_tokens): counted, never dispatched; a model no
        route names goes to the passthrough upstream like any other call."""
        routed = self._parse(COUNT_TOKENS, request)
        if routed is None:
            assert self.passthrough is not None
            return await self.passthrough.forward(request, COUNT_TOKENS.family, COUNT_TOKENS.api)
        body, parsed, runtime, _, timeout = routed
        trace = None
        if self.tracer is not None or TRACEPARENT in request.headers:
            trace = start_count_tokens(self.tracer, request.headers, runtime.route.name, parsed.model)
        forwarded = COUNT_TOKENS.forwarded(request.headers)
        counted = await count_tokens(runtime, body, forwarded, received + timeout, trace)
        return self._answered(request, COUNT_TOKENS.api, received, counted)

    def _parse(
        self, api: Inbound, request: Request
    ) -> tuple[dict[str, Any], Parsed, RouteRuntime, Priority, float] | None:
        """The body, its routing facts, route, priority and deadline; None for a model no route names that
        passthrough carries; ProxyError for anything malformed or unrouted."""
        try:
            body = json_loads(request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProxyError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
        except RecursionError:
            raise ProxyError(400, "request body is nested too deeply to be read", "invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(400, "request body must be a JSON object", "invalid_request")
        model = body.get("model")
        runtime = self.router.by_model.get(model) if isinstance(model, str) else None
        if runtime is None and model and self.passthrough is not None and self.passthrough.serves(api.family):
            return None  # not ours to check: the upstream judges the request as it would without the sidecar
        parsed = api.parse(body)
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
        return body, parsed, runtime, cast(Priority, priority), timeout

    async def serve(self, api: Inbound, request: Request, received: float) -> Response | StreamingResponse:
        """One request of an inbound API: parse, dispatch, answer in the API's own shape."""
        routed = self._parse(api, request)
        if routed is None:
            assert self.passthrough is not None
            return await self.passthrough.forward(request, api.family, api.api)
        body, parsed, runtime, priority, timeout = routed
        route = runtime.route
        if route.system_prompts:
            _add_locale_prompt(api, body, parsed, route.system_prompts, request.headers.get("x-llmroute-locale"))
        call = Call(
            runtime=runtime,
            api=api,
            body=body,
            stream=parsed.stream,
            priority=priority,
            deadline=received + timeout,
            needs=parsed.needs,
            tokens_in=parsed.tokens_in,
            tokens_out=parsed.tokens_out,
            headers=api.forwarded(request.headers) if api.forward_headers else None,
        )
        if self.admission is not None and self.admission.active:
            self.admission.admit(call)  # a 429 when a limit refuses; else a reservation settled by _settle
        if self.tracer is not None or TRACEPARENT in request.headers:
            call.trace = start_trace(self.tracer, request.headers, call)
        gate = runtime.gates.get(priority)
        if gate is not None:  # the priority's maxConcurrency: wait for a slot, within the deadline
            try:
                await gate.acquire(call.deadline - time.monotonic())
            except TimeoutError as exc:
                _settle(call, None)
                waited = ProxyError(504, f"deadline exceeded waiting for a {priority} slot: {exc}", "deadline_exceeded")
                self._observe(request, call, None, "error", received, waited.status, waited.code)
                return waited.response(api.family)
            except BaseException:  # the app went away while it waited: nothing was sent
                _settle(call, None)
                raise
        in_flight = self.metrics.child(self.metrics.in_flight, route.name)
        in_flight.inc()
        holds_stream = False  # a stream releases the slot and the gauge when the app has read it
        answer: Answer | None = None
        try:
            try:
                answer = await self.dispatcher.run(call)
            except UpstreamError as error:  # a 4xx the backend gave: the request's fault, returned as is
                status = error.status or 400
                self._observe(request, call, None, "client_error", received, status, error.kind.value, error.headers)
                shaped = error.body_for(api.family)
                return Response(status, shaped, [*self._headers(call, None, received), *error.headers])
            except ProxyError as error:
                self._observe(request, call, None, "error", received, error.status, error.code)
                error.headers = [*error.headers, *self._headers(call, None, received)]
                return error.response(api.family)
            except asyncio.CancelledError:  # the app went away: its attempts and hedges were cancelled with it
                _settle(call, None, unknown=True)
                self._observe(request, call, None, "abandoned", received, ABANDONED)
                raise
            if answer.stream is not None:
                holds_stream = True
                response_headers = self._headers(call, answer, received)
                response_headers.extend(answer.stream.headers)
                relay = _Relay(
                    self._relay(request, call, answer, received, gate),
                    self._unstarted(request, call, answer, received, gate),
                )
                return StreamingResponse(200, relay, response_headers)
            assert answer.completion is not None
            self._observe(request, call, answer, "success", received, 200)
            response_headers = self._headers(call, answer, received)
            response_headers.append(("x-llmroute-cost-usd", f"{answer.cost:.8f}"))
            if answer.completion.headers:
                response_headers.extend(answer.completion.headers)
            return Response(200, answer.completion.body, response_headers)
        finally:
            if not holds_stream:
                _settle(call, answer)
                in_flight.dec()
                if gate is not None:
                    gate.release()

    async def _relay(
        self, request: Request, call: Call, answer: Answer, received: float, gate: ConcurrencyGate | None
    ) -> AsyncGenerator[bytes, None]:
        """Forward a stream that already produced its first chunk, then its cost comment and the API's ending.
        A chat, Messages or Responses stream that breaks off is continued on a backend that can (continuation.py), and
        so is a continuation that breaks off, so the app gets one whole answer; otherwise it ends with the API's SSE
        error naming the interruption. Each stream's attempt closes here, whatever happens: abandoned when the app
        goes away mid-stream."""
        ttft = time.monotonic() - received
        self.metrics.child(
            self.metrics.ttft, call.runtime.route.name, answer.candidate.name, call.priority, call.api.api
        ).observe(ttft)
        continuation = Continuation(self.dispatcher, call, call.deadline - received) if can_continue(call) else None
        spent = 0.0  # what interrupted attempts cost before the one that finished
        outcome = "abandoned"
        try:
            while True:
                stream = answer.stream
                assert stream is not None
                candidate = answer.candidate
                try:
                    with answer.attempt as attempt:
                        data = answer.first_chunk
                        try:
                            # Send what we have before waiting for more; once the answer is complete, nothing
                            # more is awaited, so its last events go out in one write with the cost and ending.
                            while not stream.complete:
                                yield data if continuation is None else continuation.relay(data)
                                data = await anext(stream, b"")
                                attempt.chunk()
                        except UpstreamError as error:
                            attempt.fail(error)
                            resumed = await continuation.resume(candidate, error) if continuation is not None else None
                            if resumed is None:
                                outcome = "error"
                                if continuation is not None:
                                    message = continuation.interruption(candidate, error)
                                else:
                                    message = f"backend {candidate.name} failed mid-stream: {error}"
                                interrupted = ProxyError(502, message, "stream_interrupted")
                                sequence = stream.sequence  # a spliced stream is numbered on by its splice
                                if continuation is not None:
                                    sequence = continuation.sequence(sequence)
                                yield call.api.error_event(interrupted, sequence)
                                return
                            assert continuation is not None
                            self.metrics.child(self.metrics.continuations, call.runtime.route.name).inc()
                            spent += continuation.cost_so_far(candidate)
                            _bill_interrupted(call, continuation.tokens_so_far())
                            answer = resumed
                            continue
                        outcome = "success"
                        cost = answer.cost = spent + attempt.succeed(stream.usage)
                        end = data if continuation is None else continuation.relay(data, last=True)
                        yield end + call.api.stream_end(cost)
                        return
                finally:
                    await stream.aclose()
                    if stream.skipped:
                        skipped = self.metrics.child(
                            self.metrics.skipped_events, call.runtime.route.name, candidate.name
                        )
                        skipped.inc(stream.skipped)
        finally:
            self._release(request, call, answer, outcome, received, gate, ttft)

    def _release(
        self,
        request: Request,
        call: Call,
        answer: Answer,
        outcome: str,
        received: float,
        gate: ConcurrencyGate | None,
        ttft: float | None = None,
        status: int = 200,
    ) -> None:
        """A stream is over for the app: record it, settle it, and give back its in-flight count and its
        class's slot. A stream that did not end properly is charged its reservation (its usage never came).
        `status`: what the app got (a relayed stream's 200 went out with its first chunk)."""
        _settle(call, answer, unknown=outcome != "success")
        error = "stream_interrupted" if outcome == "error" else None
        self._observe(request, call, answer, outcome, received, status, error, ttft=ttft)
        self.metrics.child(self.metrics.in_flight, call.runtime.route.name).dec()
        if gate is not None:
            gate.release()

    def _unstarted(
        self, request: Request, call: Call, answer: Answer, received: float, gate: ConcurrencyGate | None
    ) -> Callable[[], Awaitable[None]]:
        """What closing a stream that was never sent must do: the relay's own cleanup never ran."""

        async def close() -> None:
            if not answer.attempt.closed:
                answer.attempt.abandon()
            assert answer.stream is not None
            await answer.stream.aclose()
            self._release(request, call, answer, "abandoned", received, gate, status=ABANDONED)  # nothing was sent

        return close

    def _observe(
        self,
        request: Request,
        call: Call,
        answer: Answer | None,
        outcome: str,
        received: float,
        status: int,
        error: str | None = None,
        upstream_headers: list[tuple[str, str]] | None = None,
        ttft: float | None = None,
    ) -> None:
        """A dispatched request has ended: its duration metric and its access-log line."""
        now = time.monotonic()
        backend = answer.candidate.name if answer is not None else "none"
        self.metrics.child(
            self.metrics.request_duration, call.runtime.route.name, backend, call.priority, outcome, call.api.api
        ).observe(now - received)
        if self.access is not None:
            log_call(self.access, request, call, answer, outcome, received, status, error, upstream_headers, ttft)
        if call.trace is not None:
            call.trace.end(call, answer, outcome)

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
        if call.policy is not None and call.policy.downgraded_by:
            headers.append(("x-llmroute-downgraded", call.policy.downgraded_by))
        return headers


class _Relay(AsyncGenerator[bytes, None]):
    """A stream's relay that is closed properly even before its first step. The server closes a response it
    cannot send (the app left as the answer was handed over, or at shutdown) without stepping it, and a
    generator that never started skips its own finally: the attempt, the in-flight count and the class's
    slot would never be given back."""

    def __init__(self, steps: AsyncGenerator[bytes, None], unstarted: Callable[[], Awaitable[None]]) -> None:
        self._steps = steps
        self._unstarted: Callable[[], Awaitable[None]] | None = unstarted

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self.asend(None)  # the step itself, not a coroutine awaiting it: one frame less per chunk

    def asend(self, value: None) -> Coroutine[Any, Any, bytes]:
        self._unstarted = None  # from now on the relay's own finally cleans up
        return self._steps.asend(value)

    async def athrow(self, typ: Any, val: Any = None, tb: Any = None) -> bytes:
        await self._close_unstarted()
        return await self._steps.athrow(typ, val, tb)

    async def aclose(self) -> None:
        await self._close_unstarted()
        await self._steps.aclose()

    async def _close_unstarted(self) -> None:
        unstarted, self._unstarted = self._unstarted, None
        if unstarted is not None:
            await unstarted()


def _add_locale_prompt(
    api: Inbound, body: dict[str, Any], parsed: Parsed, prompts: dict[str, str], locale: str | None
) -> None:
    """The route's system prompt for the request's locale (`vi`, or `vi-VN` falling back to `vi`), when the
    app sent no system prompt of its own: never overrides the app's."""
    if not locale:
        return
    locale = locale.strip().lower()
    prompt = prompts.get(locale) or prompts.get(locale.partition("-")[0])
    if prompt is not None and api.add_system(body, prompt):
        parsed.tokens_in += estimate_tokens(prompt)


def _bill_interrupted(call: Call, tokens: int) -> None:
    """Note on the request's policy reservation the tokens of an attempt that broke off and was continued."""
    reservation = call.policy.reservation if call.policy is not None else None
    if reservation is not None:
        reservation.interrupted(tokens)


def _settle(call: Call, answer: Answer | None, *, unknown: bool = False) -> None:
    """End the request's policy reservation, once: at the answer's real cost and tokens; at nothing for a
    request no backend answered; at what it reserved when the usage is `unknown` (the app went away, a
    stream broke off: the provider may bill tokens the sidecar never saw)."""
    reservation = call.policy.reservation if call.policy is not None else None
    if reservation is None or reservation.closed:
        return
    if unknown:
        reservation.settle_reserved()
        return
    if answer is None:
        reservation.settle(0.0, 0)
        return
    usage = answer.completion.usage if answer.completion is not None else answer.stream.usage if answer.stream else None
    reservation.settle(answer.cost, usage.prompt_tokens + usage.completion_tokens if usage is not None else 0)
