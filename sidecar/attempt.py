"""One attempt on one backend as a handle that owns everything the attempt holds and is closed exactly once.

An attempt holds four things from its start to its verdict: the estimator's token (its latency feeds the
backend's stats), a lease on the upstream client (a retired client closes after its last call), an
in-flight count in the load report, and the metrics of its outcome. `succeed`, `fail` and `abandon` each
release all four; the first verdict closes the handle and a second one raises, so no path can finish an
attempt twice or forget part of it. Used as a context manager, a handle still open when the block ends
is abandoned, unless it was handed over (`hand_over`) to a stream, which then closes it when it ends.
Continuation, hedging, admission and tracing hook in here: the one place an attempt begins and ends. The
GenAI client metrics are observed here, and a traced request's attempt span (`trace`) starts and ends here.
"""

from __future__ import annotations

import time
from types import TracebackType

from llmroute.model import Api
from llmroute.sidecar.balancer.candidates import Candidate
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.genai import OPERATION_NAMES, PROVIDER_NAMES
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.runtime import RouteRuntime
from llmroute.sidecar.tracing import AttemptTrace, RequestTrace
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Usage


class AttemptClosed(RuntimeError):
    """A verdict on an attempt that already had one: a bug in the caller, never a runtime condition."""


class Attempt:
    """One call on one backend, from `start` to its verdict."""

    __slots__ = (
        "_genai",
        "_handed_over",
        "_last_chunk",
        "_load",
        "_longest_gap",
        "_metrics",
        "_shadow",
        "_token",
        "_trial",
        "candidate",
        "closed",
        "runtime",
        "span",
        "started",
        "ttft",
    )

    def __init__(
        self,
        runtime: RouteRuntime,
        candidate: Candidate,
        metrics: SidecarMetrics,
        load: LoadRecorder | None,
        *,
        stream: bool = False,
        api: Api = "chat",
        trace: RequestTrace | None = None,
        shadow: bool = False,
    ) -> None:
        self.runtime = runtime
        self.candidate = candidate
        self._metrics = metrics
        self._load = load
        self.started = time.monotonic()
        self.ttft: float | None = None
        self.closed = False
        self._handed_over = False
        self._last_chunk = 0.0
        self._longest_gap = 0.0
        self._shadow = shadow
        runtime.pool.lease(runtime.upstreams[candidate.name])
        detector = runtime.detector
        self._trial = candidate.name in detector.half_open and detector.trial_started(candidate.name)
        """A half-open backend's one trial request: its verdict closes or reopens the circuit."""
        if load is not None:
            load.start(runtime.route.name, candidate.name)
        self._token = candidate.stats.start(self.started, stream=stream, shadow=shadow)
        spec = candidate.spec
        self._genai = metrics.genai(OPERATION_NAMES[api], PROVIDER_NAMES[spec.provider], spec.model)
        self.span: AttemptTrace | None = trace.attempt(candidate) if trace is not None else None
        """This attempt's part of the request's trace; its `headers` go with the backend call."""

    @property
    def trace_headers(self) -> dict[str, str] | None:
        """`traceparent` (and `tracestate`) for the backend call, when the request is traced."""
        return self.span.headers if self.span is not None else None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Attempt({self.runtime.route.name}/{self.candidate.name}, {state})"

    def first_byte(self, head: bytes = b"") -> float:
        """The first chunk (`head`) of a stream arrived: its time to first token, fed to the estimator."""
        now = time.monotonic()
        self.candidate.stats.first_byte(self._token, now)
        self.ttft = ttft = now - self.started
        self._last_chunk = now
        self._genai.ttfc.observe(ttft)
        if self.span is not None:
            self.span.first_chunk(ttft, head)
        return ttft

    def chunk(self) -> None:
        """More of a stream arrived: its longest silence so far is kept, to learn the backend's normal gaps."""
        now = time.monotonic()
        gap = now - self._last_chunk
        if gap > self._longest_gap:
            self._longest_gap = gap
        self._last_chunk = now

    def succeed(self, usage: Usage, outcome: str = "success", body: bytes = b"") -> float:
        """It answered (a stream: to its end): feed the policies, count tokens and spend; returns USD. `body`
        is a JSON answer's, for its span."""
        now = self._close()
        runtime, candidate = self.runtime, self.candidate
        candidate.stats.finish(self._token, now)
        runtime.detector.record_success(candidate.name)
        # A whole stream: its longest silence was a normal one. Not a shadow probe's: a few short answers to
        # "ping" would set the idle limit (4x their gaps, 2 s at least) for the app's long streams.
        if self.ttft is not None and not self._shadow:
            candidate.stats.gaps.add(self._longest_gap)
        route, name = runtime.route.name, candidate.name
        price = candidate.spec.price
        cost = price.cost(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens)
        m = self._metrics
        m.child(m.attempts, route, name, outcome).inc()
        m.child(m.tokens, route, name, "input").inc(usage.prompt_tokens)
        m.child(m.tokens, route, name, "output").inc(usage.completion_tokens)
        if usage.cached_tokens:
            m.child(m.tokens, route, name, "cached_input").inc(usage.cached_tokens)
        if cost:
            m.child(m.cost, route, name).inc(cost)
        self._genai.answered(now - self.started, usage.prompt_tokens, usage.completion_tokens)
        if self.span is not None:
            self.span.succeed(usage, cost, body)
        if self._load is not None:
            self._load.finish(
                route,
                name,
                failure=None,
                latency=now - self.started,
                ttft=self.ttft,
                tokens_in=usage.prompt_tokens,
                tokens_out=usage.completion_tokens,
                cost_usd=cost,
            )
        return cost

    def fail(self, error: UpstreamError) -> None:
        """It failed (a stream: after its first chunk too): feed estimates, ejection, metrics, reports."""
        now = self._close()
        runtime, name, kind = self.runtime, self.candidate.name, error.kind
        self.candidate.stats.finish(self._token, now, kind)
        m = self._metrics
        m.child(m.attempts, runtime.route.name, name, kind.value).inc()
        if kind is FailureKind.RATE_LIMITED:
            ejected = runtime.detector.record_rate_limited(name, error.retry_after, now)
        else:
            ejected = runtime.detector.record_failure(name, kind, now)
        if ejected:
            m.child(m.ejections, runtime.route.name, name, kind.value).inc()
        self._genai.failed(now - self.started, kind.value)
        if self.span is not None:
            self.span.fail(error)
        if self._load is not None:
            self._load.finish(
                runtime.route.name,
                name,
                failure=kind.value,
                latency=now - self.started,
                ttft=None,
                tokens_in=0,
                tokens_out=0,
                cost_usd=0.0,
            )

    def abandon(self) -> None:
        """No verdict: it lost a race, outlived the deadline, or the app went away. Its time so far is a lower
        bound on the backend's latency."""
        now = self._close()
        self.candidate.stats.cancel(self._token, now)
        if self._trial:
            self.runtime.detector.trial_abandoned(self.candidate.name)
        if self._load is not None:
            self._load.cancel(self.runtime.route.name, self.candidate.name)
        if self.span is not None:
            self.span.abandon()

    def hand_over(self) -> Attempt:
        """Keep it open past the block it was started in: a stream now owns it and must close it."""
        self._handed_over = True
        return self

    def _close(self) -> float:
        if self.closed:
            raise AttemptClosed(f"{self!r} already has a verdict")
        self.closed = True
        self.runtime.pool.release(self.runtime.upstreams[self.candidate.name])
        return time.monotonic()

    def __enter__(self) -> Attempt:
        self._handed_over = False  # a new owner's block: it closes the attempt if nothing else does
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self.closed and not self._handed_over:
            self.abandon()
