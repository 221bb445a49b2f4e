"""The access log: one JSON line per app request on stdout (`--access-log json`), written by a thread so that a
slow stdout never holds up the event loop.

A line holds names, ids, numbers and codes only: never a credential, a prompt, an answer or an error message
(an upstream's message can quote the prompt). The request path formats its line (a template) and appends
it to a bounded buffer; the writer thread, woken when lines wait (at most every FLUSH_S), takes all of them and
writes them in one call.
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
"""The writer's pause after each write: lines of a busy sidecar go out in batches, at most this much late."""
CAPACITY = 10_000
"""Lines held while stdout is slower than the requests (about 4 MB; `--access-log-buffer`); more are dropped
and counted."""
STOP_TIMEOUT_S = 2.0
"""At shutdown, how long the last lines may take to be written before they are given up."""
ABANDONED = 499
"""The status logged when the app went away before its answer (nginx's 'client closed request')."""

_HEX = frozenset("0123456789abcdef")
_escape = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
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
        self._pending = threading.Event()
        """Set when lines wait to be written: an idle sidecar's writer sleeps without waking up."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="access log writer", daemon=True)
        self._second = -1
        self._stamp = ""

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def stop(self) -> None:
        """Write what is buffered (bounded by STOP_TIMEOUT_S) and end the writer thread."""
        if self._thread.is_alive():
            self._stopping = True
            self._pending.set()
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
    ) -> None:
        """Log one request that has ended (`received`: its time.monotonic() on arrival). docs/observability.md
        describes every field. The line is written from a template rather than by json.dumps of a dict, which
        costs several times as much; every string from the app, a backend or the config is JSON-escaped."""
        latency = (time.monotonic() - received) * 1000
        headers = request.headers
        trace = trace_id(headers.get("traceparent"))
        request_id = headers.get("x-request-id") or f"{_rng.getrandbits(64):016x}"
        line = (
            f'{{"time":"{self._time(time.time())}","trace_id":{_string(trace)},'
            f'"request_id":{_string(request_id)},"method":{_string(request.method)},"path":{_string(request.path)},'
            f'"api":{_string(api)},"model":{_string(model)},"route":{_string(route)},"backend":{_string(backend)},'
            f'"priority":{_string(priority)},"stream":{"true" if stream else "false"},"status":{status:d},'
            f'"outcome":{_string(outcome)},"error":{_string(error)},"attempts":{attempts:d},'
            f'"latency_ms":{latency:.3f},"ttft_ms":{"null" if ttft is None else f"{ttft * 1000:.3f}"},'
            f'"tokens_in":{_number(tokens_in)},"tokens_out":{_number(tokens_out)},"cost_usd":{_number(cost)},'
            f'"upstream_request_id":{_string(_request_id(upstream_headers))},"policy":null}}'
        )
        if len(self._lines) >= self._capacity:
            self._dropped(1)
        else:
            self._lines.append(line)
            if not self._pending.is_set():
                self._pending.set()

    def _time(self, now: float) -> str:
        """RFC 3339 UTC with milliseconds; the part up to the second is formatted once a second."""
        second = int(now)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def _run(self) -> None:
        """The writer thread: when lines wait, all of them in one write, then a pause of FLUSH_S so that a busy
        sidecar's lines go out in batches; a failing stdout loses lines, never the sidecar."""
        buffered = self._lines
        while True:
            self._pending.wait()
            self._pending.clear()
            lines = [buffered.popleft() for _ in range(len(buffered))]
            if lines:
                data = memoryview(("\n".join(lines) + "\n").encode())
                try:
                    while data:
                        data = data[os.write(self._fd, data) :]
                except OSError as exc:  # a closed or broken stdout
                    self._dropped(len(lines))
                    log.warning("%d access log lines lost: %s", len(lines), exc)
            if self._stopping:
                return
            time.sleep(FLUSH_S)


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
    """The line of a dispatched request: its route, the backend that answered (if any), tokens and cost."""
    tokens_in = tokens_out = cost = None
    if answer is not None:
        source = answer.completion if answer.completion is not None else answer.stream
        assert source is not None
        usage = source.usage
        tokens_in, tokens_out, cost = usage.prompt_tokens, usage.completion_tokens, answer.cost
        upstream_headers = source.headers
    model = call.body.get("model")
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
    )


def _string(value: str | None) -> str:
    """A JSON string (escaped, ASCII), or null."""
    return "null" if value is None else _escape(value)


def _number(value: float | None) -> str:
    """A JSON number, or null."""
    return "null" if value is None else repr(value)


def _request_id(headers: list[tuple[str, str]] | None) -> str | None:
    """The backend's own request id (OpenAI's x-request-id, Anthropic's request-id), for its support desk."""
    for name, value in headers or ():
        if name in ("x-request-id", "request-id"):
            return value
    return None
