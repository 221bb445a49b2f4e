"""POST /v1/messages/count_tokens: the provider's own count from a backend that serves Messages natively,
else an estimate, marked `x-llmroute-estimate: true`.

Not through the dispatcher, on purpose. Counting is free and generates nothing, so it answers far sooner
than generation does: fed to the dispatcher's latency estimates, it would make a backend look fast for
generation, and hedges and cost have nothing to do for it. Its backends are tried in the route's order,
skipping ejected ones, within the request's deadline; a 4xx goes back to the app as the provider wrote it.
With a trace (llmroute.sidecar.tracing.CountTrace), each backend call carries it and the request is recorded.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llmroute.http import Response
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.inbound.base import estimate_tokens
from llmroute.sidecar.runtime import RouteRuntime
from llmroute.sidecar.tracing import CountTrace
from llmroute.sidecar.upstream.errors import UpstreamError

ESTIMATE_HEADER = "x-llmroute-estimate"
"""Set to `true` on a count the sidecar estimated (about four characters a token) instead of a provider's."""


def estimate(body: dict[str, Any]) -> int:
    """About how many tokens the system prompt, messages and tools of `body` hold."""
    return estimate_tokens([body.get("system"), body.get("messages"), body.get("tools")])


async def count_tokens(
    runtime: RouteRuntime,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    deadline: float,
    trace: CountTrace | None = None,
) -> Response:
    """The count for `body` (a count_tokens request for `runtime`'s route), before `deadline` (monotonic)."""
    if trace is None:
        return await _count(runtime, body, headers, deadline, None)
    try:
        response = await _count(runtime, body, headers, deadline, trace)
    except BaseException:
        trace.end(None, None)  # the app went away
        raise
    trace.end(response.status, next((v for k, v in response.headers if k == "x-llmroute-backend"), None))
    return response


async def _count(
    runtime: RouteRuntime,
    body: dict[str, Any],
    headers: dict[str, str] | None,
    deadline: float,
    trace: CountTrace | None,
) -> Response:
    route = [("x-llmroute-route", runtime.route.name)]
    for candidate in runtime.candidates:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if "messages" not in candidate.spec.apis or not runtime.detector.is_available(candidate.name):
            continue
        upstream = runtime.upstreams[candidate.name]
        sent = headers
        if trace is not None:
            sent = {**(headers or {}), **trace.call(candidate)}
        runtime.pool.lease(upstream)
        try:
            answer, forwarded = await upstream.count_tokens(body, timeout=remaining, headers=sent)
        except UpstreamError as error:
            if trace is not None:
                trace.called(error)
            if error.kind is FailureKind.CLIENT_ERROR:  # the request's fault: the next backend would say the same
                return Response(error.status or 400, error.body_for("anthropic"), [*route, *error.headers])
            continue
        finally:
            runtime.pool.release(upstream)
        if trace is not None:
            trace.called(None)
        return Response(200, answer, [*route, ("x-llmroute-backend", candidate.name), *forwarded])
    count = json.dumps({"input_tokens": estimate(body)}).encode()
    return Response(200, count, [*route, (ESTIMATE_HEADER, "true")])
