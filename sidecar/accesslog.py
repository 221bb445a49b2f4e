"""The access log: one JSON line per app request on stdout (`--access-log json`), written by a thread so that a
slow stdout never holds up the event loop.

A line holds names, ids, numbers and codes only: never a credential, a prompt, an answer or an error message
(an upstream's message can quote the prompt). The request path formats its line (a template) and appends
it to a bounded buffer, and that is all: the writer thread looks at the buffer every FLUSH_S (less often while
it stays empty, up to IDLE_S) and writes what it finds in one call.
When the buffer is full (stdout is a pipe nobody drains fast enough) a line is dropped and counted in
`llmroute_access_log_dropped_total` instead of waiting.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from llmroute.http import Request

if TYPE_CHECKING:
    from llmroute.sidecar.dispatch import Answer, Call

log = logging.getLogger("llmroute.sidecar.accesslog")

FLUSH_S = 0.05
"""How often a busy sidecar's writer takes the buffered lines: they go out in batches, at most this much late."""
IDLE_S = 1.0
"""The writer's longest pause while no line comes: an idle sidecar's thread wakes once a second."""
CAPACITY = 10_000
"""Lines held while stdout is slower than the requests (about 4 MB; `--access-log-buffer`); more are dropped
and counted."""
STOP_TIMEOUT_S = 2.0
"""At shutdown, how long the last lines may take to be written before they are given up."""
ABANDONED = 499
"""The status logged when the app went away before its answer (nginx's 'client closed request')."""

_HEX = frozenset("0123456789abcdef")
_escape = json.encoder.encode_basestring_ascii
_rng = random.Random()


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), None when absent or invalid."""
    if traceparent is None or len(traceparent) < 55 or traceparent[2] != "-" or traceparent[35] != "-":
        return None
    trace = traceparent[3:35]
    if traceparent[:2] == "ff" or not _HEX.issuperset(trace) or trace == "0" * 32:
        return None
    return trace


class AccessLog:
    """Formats the lines and owns the writer thread; `start` before the first request, `stop` after the last."""

    def __init__(self, fd: int, dropped: Callable[[float], None], capacity: int = CAPACITY) -> None:
        self._fd = fd
        """Written with os.write, not through sys.stdout's buffer: a writer blocked on a full pipe then holds
        no lock that the interpreter needs at exit."""
        self._dropped = dropped
        """Counts lost lines (the metric's `inc`)."""
        self._capacity = capacity
        self._lines: deque[str] = deque()
        """append (the loop) and popleft (the writer) are atomic: no lock on the request path."""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access log writer", daemon=True)
        self._second = -1
        self._stamp = ""

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Write what is buffered (bounded by STOP_TIMEOUT_S) and end the writer thread."""
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join(STOP_TIMEOUT_S)

    def write(
        self,
        request: Request,
        received: float,
        *,
        status: int,
        outcome: str,
        api: str,
        route: str | None = None,
        backend: str | None = None,
        model: str | None = None,
        priority: str | None = None,
        stream: bool = False,
        attempts: int = 0,
        ttft: float | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        cost: float | None = None,
        error: str | None = None,
        upstream_headers: list[tuple[str, str]] | None = None,
        policy: str | None = None,
    ) -> None:
        """Log one request that has ended (`received`: its time.monotonic() on arrival). docs/observability.md
        describes every field. The line is written from a template rather than by json.dumps of a dict (which
        costs two to three times as much), with no function call for what is absent; every string that comes from
        the app, a backend or the configuration is JSON-escaped."""
        latency = (time.monotonic() - received) * 1000
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        headers = request.headers
        traceparent = headers.get("traceparent")
        trace = None if traceparent is None else trace_id(traceparent)
        upstream_id = _request_id(upstream_headers) if upstream_headers else None
        esc = _escape
        line = (
            f'{{"time":"{self._stamp}.{int((now - second) * 1000):03d}Z",'
            f'"trace_id":{"null" if trace is None else esc(trace)},'
            f'"request_id":{esc(headers.get("x-request-id") or f"{_rng.getrandbits(64):016x}")},'
            f'"method":{esc(request.method)},"path":{esc(request.path)},"api":"{api}",'
            f'"model":{"null" if model is None else esc(model)},"route":{"null" if route is None else esc(route)},'
            f'"backend":{"null" if backend is None else esc(backend)},'
            f'"priority":{"null" if priority is None else esc(priority)},"stream":{"true" if stream else "false"},'
            f'"status":{status:d},"outcome":"{outcome}","error":{"null" if error is None else esc(error)},'
            f'"attempts":{attempts:d},"latency_ms":{latency:.3f},'
            f'"ttft_ms":{"null" if ttft is None else f"{ttft * 1000:.3f}"},'
            f'"tokens_in":{"null" if tokens_in is None else tokens_in},'
            f'"tokens_out":{"null" if tokens_out is None else tokens_out},'
            f'"cost_usd":{"null" if cost is None else repr(cost)},'
            f'"upstream_request_id":{"null" if upstream_id is None else esc(upstream_id)},'
            f'"policy":{"null" if policy is None else policy}}}'
        )
        if len(self._lines) >= self._capacity:
            self._dropped(1)
        else:
            self._lines.append(line)

    def _run(self) -> None:
        """The writer thread: every FLUSH_S while lines come (backing off to IDLE_S while none do), all buffered
        lines in one write; a failing stdout loses lines, never the sidecar. No signal from the request path:
        a request only appends its line."""
        buffered = self._lines
        pause = FLUSH_S
        while True:
            stopping = self._stopping.wait(pause)
            lines = [buffered.popleft() for _ in range(len(buffered))]
            pause = FLUSH_S if lines else min(pause * 2, IDLE_S)
            if lines:
                data = memoryview(("\n".join(lines) + "\n").encode())
                try:
                    while data:
                        data = data[os.write(self._fd, data) :]
                except OSError as exc:  # a closed or broken stdout
                    self._dropped(len(lines))
                    log.warning("%d access log lines lost: %s", len(lines), exc)
            if stopping:
                return


def policy_field(refused_by: str = "", downgraded_by: str = "", observed: tuple[str, ...] = ()) -> str | None:
    """The `policy` field: which LLMPolicy refused the request, narrowed it to cheaper backends, or saw it go over
    an Observe limit (JSON text; None when no policy did anything)."""
    if not (refused_by or downgraded_by or observed):
        return None  # the common case: every request admitted under a policy goes through here
    parts = []
    if refused_by:
        parts.append(f'"refused_by":{_escape(refused_by)}')
    if downgraded_by:
        parts.append(f'"downgraded_by":{_escape(downgraded_by)}')
    if observed:
        parts.append(f'"observed":[{",".join(_escape(name) for name in observed)}]')
    return "{" + ",".join(parts) + "}" if parts else None


def log_call(
    access: AccessLog,
    request: Request,
    call: Call,
    answer: Answer | None,
    outcome: str,
    received: float,
    status: int,
    error: str | None,
    upstream_headers: list[tuple[str, str]] | None,
    ttft: float | None,
) -> None:
    """The line of a dispatched request: its route, the backend that answered (if any), tokens and cost (of a
    continued stream, the whole answer's, as the app's usage and cost say; of a stream that broke off and was
    not continued, none: its usage never came)."""
    tokens_in = tokens_out = cost = None
    if answer is not None:
        source = answer.completion if answer.completion is not None else answer.stream
        assert source is not None
        if outcome != "error":
            tokens_in, tokens_out = answer.tokens()
            cost = answer.cost
        upstream_headers = source.headers
    model = call.body.get("model")
    decision = call.policy
    access.write(
        request,
        received,
        status=status,
        outcome=outcome,
        api=call.api.api,
        route=call.runtime.route.name,
        backend=answer.candidate.name if answer is not None else None,
        model=model if isinstance(model, str) else None,
        priority=call.priority,
        stream=call.stream,
        attempts=call.attempts,
        ttft=ttft,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost=cost,
        error=error,
        upstream_headers=upstream_headers,
        policy=None if decision is None else policy_field("", decision.downgraded_by, decision.observed),
    )


def _request_id(headers: list[tuple[str, str]] | None) -> str | None:
    """The backend's own request id (OpenAI's x-request-id, Anthropic's request-id), for its support desk."""
    for name, value in headers or ():
        if name in ("x-request-id", "request-id"):
            return value
    return None
