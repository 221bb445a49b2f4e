"""One app request's journey across backends: rank, call, hedge, fail over, retry, within a deadline.

The policies (ranking, budget, ejection, estimates) live in `llmroute.sidecar.balancer`; this module only
sequences attempts and feeds every outcome back into them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import random
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from llmroute.model import Api, Priority
from llmroute.sidecar.attempt import Attempt
from llmroute.sidecar.balancer.candidates import Candidate, eligible
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.balancer.pickers import PickContext, rank, with_fallback
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.inbound import Inbound
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.probebody import probe_api
from llmroute.sidecar.runtime import RouteRuntime
from llmroute.sidecar.tracing import RequestTrace
from llmroute.sidecar.upstream.client import CompletionStream, Upstream
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Completion, Usage
from llmroute.supervise import log_failure

if TYPE_CHECKING:
    from llmroute.sidecar.policy.admission import Decision

SHADOW_TIMEOUT_S = 30.0
MIN_ATTEMPT_S = 0.05
"""An attempt is not started with less time than this left: it could not succeed."""
TAIL_FACTOR = 3.0
TAIL_MARGIN_S = 1.0
"""Non-hedging classes hedge a request once it has taken max(3 x p95, p95 + 1 s) of its backend."""
STREAM_IDLE_FLOOR_S = 2.0
"""A stream is never cut for a silence shorter than this, however regular its backend's chunks; the ceiling
is the class's timeout (both bounds settable per class: streamIdle)."""
FIRST_TOKEN_DEFAULT_S = 10.0
"""The p95 a stream's first token is judged by on a backend with no history, when no other backend of the
route has any either: the tail hedge then fires after 30 s."""
LOOK_AGAIN_S = 0.1
"""A hedge that finds no backend to go to (the retry budget refused it, or none is expected to answer in time)
is asked for again this much later, not given up: the late attempt stays late, and the budget grows with new
requests and as its spends age out of its window. A refused hedge that was never asked for again waited out
its deadline on the slowed backend (a 504 where a peer answers in 1 s)."""
STALL_RECHECK_S = 0.05
"""A request past its backend's p95 looks again whether the backend as a whole has stalled every quarter of
that p95, and at least this long apart: requests sent after it may make the quorum (for those already out,
`BackendStats.stall_due` gives the moment)."""

_rng = random.Random()
log = logging.getLogger(__name__)


@dataclass(slots=True)
class Call:
    """One app request as the dispatcher sees it."""

    runtime: RouteRuntime
    api: Inbound
    body: dict[str, Any]
    stream: bool
    priority: Priority
    deadline: float
    """time.monotonic() by which an answer (for streams: the first chunk) must be there."""
    needs: frozenset[str]
    tokens_in: int = 1
    tokens_out: int = 0
    """Estimated prompt and completion tokens, for pricing before the request is sent."""
    headers: dict[str, str] | None = None
    """App headers for a backend that serves the call's API natively (protocol versions, betas)."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Backends left out of the plan, and why: every backend of the route is accounted for in a failure."""
    not_tried: str = ""
    """Why no further attempt was made while backends were left (attempts used up, retry budget, ...)."""
    min_context: int = 0
    """After a backend refused the prompt as too long: only backends with a larger window (or none declared)."""
    attempts: int = 0
    upstream_started: float = 0.0
    upstream_done: float = 0.0
    """When the first attempt began and the last one ended: between them the sidecar waits on backends,
    so time outside them is the sidecar's own overhead."""
    errors: list[tuple[str, UpstreamError]] = field(default_factory=list)
    policy: Decision | None = None
    """What the LLMPolicies decided (None when none applies): its reservation, backends it left out."""
    trace: RequestTrace | None = None
    """The request's trace (llmroute.sidecar.tracing): None unless the app sent one or tracing is on."""


@dataclass(slots=True)
class Answer:
    """The winning attempt: a completion, or an open stream whose first chunk already arrived."""

    candidate: Candidate
    attempt: Attempt
    """Closed for a completion; for a stream, handed over to whoever reads it, who must close it."""
    completion: Completion | None = None
    stream: CompletionStream | None = None
    first_chunk: bytes = b""
    cost: float = 0.0
    """USD, once the usage is known (at once for JSON answers, at the end for streams)."""
    continued_from: tuple[int, int] = (0, 0)
    """A continuation's: the (input, output) tokens billed for the attempts that broke off before it, which
    with its own usage make the whole answer's (llmroute.sidecar.continuation)."""

    def tokens(self) -> tuple[int, int]:
        """(input, output) tokens of the whole answer, as the app's usage gives them: the answering attempt's,
        plus what the attempts of a continued stream that broke off before it billed."""
        source = self.completion if self.completion is not None else self.stream
        assert source is not None
        usage = source.usage
        before_in, before_out = self.continued_from
        return usage.prompt_tokens + before_in, usage.completion_tokens + before_out


class Dispatcher:
    """Runs calls against a route's backends and keeps the route's policies informed."""

    def __init__(self, metrics: SidecarMetrics, load: LoadRecorder | None = None) -> None:
        self.metrics = metrics
        self.load = load
        """Per-backend counts for the operator's load reports (control-plane mode only)."""
        self._background: set[asyncio.Task[None]] = set()

    # ----- planning -------------------------------------------------------------------------------------

    @staticmethod
    def _capable(call: Call) -> list[Candidate]:
        """The route's backends that can carry this request: its API (natively or translated), every
        parameter of it, the capabilities it needs, and a prompt of its size. The others go into
        `call.skipped` with the reason; when none is left, a 400 names each backend and what it lacked."""
        runtime = call.runtime
        api = call.api.api
        capable = []
        codes = set()
        excluded = call.policy.excluded if call.policy is not None else _NONE
        for candidate in runtime.candidates:
            spec = candidate.spec
            if candidate.name in excluded:  # admission made sure some backend is left
                call.skipped[candidate.name] = excluded[candidate.name]
                continue
            codec = runtime.upstreams[candidate.name].codecs.get(api)
            if codec is None:
                codes.add("unsupported_api")
                call.skipped[candidate.name] = f"serves no {api} API, natively or translated"
            elif codec.translates and (missing := codec.lacks(call.body)) is not None:
                codes.add("unsupported_parameter")
                call.skipped[candidate.name] = f"cannot carry {missing}"
            elif not spec.serves(call.needs):
                codes.add("unsupported_capability")
                call.skipped[candidate.name] = f"does not support {', '.join(sorted(spec.lacks(call.needs)))}"
            elif spec.context_window is not None and call.tokens_in > spec.context_window:
                codes.add("context_length_exceeded")
                call.skipped[candidate.name] = (
                    f"context window of {spec.context_window:,} tokens is smaller than the prompt (about"
                    f" {call.tokens_in:,} tokens)"
                )
            else:
                capable.append(candidate)
        if capable:
            return capable
        # One code for the app to act on: the first reason in this order that applies to some backend.
        code = next(c for c in _SKIP_CODES if c in codes)
        detail = "; ".join(f"{name}: {why}" for name, why in call.skipped.items())
        raise ProxyError(400, f"no backend of route {runtime.route.name} can serve this request: {detail}", code)

    def _plan(self, call: Call, now: float) -> list[Candidate]:
        runtime = call.runtime
        route = runtime.route
        capable = self._capable(call)
        available = eligible(capable, runtime.detector)
        if len(available) < len(capable):
            self._skip_unavailable(call, [c for c in capable if c not in available], now)
        if not available:
            names = [c.name for c in capable]
            retry_after = runtime.detector.retry_after(names, now)
            if retry_after is not None:
                raise ProxyError(
                    429,
                    f"every backend of route {route.name} is rate limited: {_accounting(call)}",
                    "rate_limited",
                    [("retry-after", str(max(1, round(retry_after))))],
                )
            raise ProxyError(
                503, f"no backend of route {route.name} can take the request: {_accounting(call)}", "no_backend"
            )
        policy = route.priorities[call.priority]
        ctx = PickContext(
            now=now,
            rng=_rng,
            deadline=call.deadline - now,
            stream=call.stream,
            input_tokens=call.tokens_in,
            output_tokens=call.tokens_out,
            weights=route.weights,
        )
        # Backends expected to miss the deadline, or that have stalled, go last whatever the strategy and the
        # fallback order: `ordered` means the first healthy backend that can answer in time, not one known to
        # take 8.5 s for a 2 s deadline, nor one whose last few requests are all overdue. Among those, the one
        # expected to answer soonest goes first: a peer whose requests are 1.5 s overdue beats one known to take
        # 8.5 s (in strategy order, `ordered` put the 8.5 s one first whenever its only other peer had stalled).
        strategy = policy.strategy or route.strategy
        remaining = call.deadline - now
        stream = call.stream
        feasible: list[Candidate] = []
        late: list[tuple[float, Candidate]] = []  # (expected latency, backend): usually none
        for candidate in available:
            expected = candidate.expected_latency(now, stream=stream)
            if expected < remaining and not candidate.stats.stalled(now):
                feasible.append(candidate)
            else:
                late.append((expected, candidate))
        if strategy in _BLIND_TO_LATENCY and feasible:
            kept = _without_far_slower(feasible, available, stream)
            if len(kept) < len(feasible):
                late += [(c.expected_latency(now, stream=stream), c) for c in feasible if c not in kept]
                feasible = kept
        if len(late) > 1:
            late.sort(key=_soonest)
        ranked = with_fallback(rank(strategy, feasible, ctx), route.fallback, [c for _, c in late])
        for candidate in runtime.shadow.due(ranked, now, stream=stream):
            probe = self._shadow_probe(runtime, candidate, now, stream=stream)
            self._spawn(probe, f"shadow probe {route.name}/{candidate.name}")
        return ranked

    # ----- the attempt loop -----------------------------------------------------------------------------

    async def run(self, call: Call) -> Answer:
        """Serve `call`: the first successful answer, or a ProxyError / UpstreamError (4xx) to return."""
        runtime = call.runtime
        route = runtime.route
        now = time.monotonic()
        runtime.retry_budget.record_request(now)
        plan = self._plan(call, now)
        attempts = _Attempts(self, call, plan)
        eager = route.priorities[call.priority].hedge
        call.upstream_started = now
        # The attempt a hedge would back up: the first, or the one a failure failed over to.
        lead, lead_started = plan[0], now
        attempts.start(lead)
        hedge_at = self._hedge_at(call, lead, lead_started, now, eager=eager) if len(plan) > 1 else math.inf
        hedged = False
        rescue = self._rescue(call, attempts, now, self._late_at(call, lead, lead_started, eager=eager))
        try:
            while attempts.running:
                now = time.monotonic()
                wake = min(call.deadline, hedge_at, rescue.at)
                done = await _first_done(attempts.running, max(wake - now, 0))
                for task in done:
                    candidate = attempts.running.pop(task)
                    error = task.exception()
                    if error is None:
                        answer = task.result()
                        self._won(call, answer, hedged, plan)
                        return answer
                    if not isinstance(error, UpstreamError):
                        raise error
                    call.errors.append((candidate.name, error))
                    if error.kind is FailureKind.CLIENT_ERROR:
                        raise error
                    if error.kind is FailureKind.CONTEXT_LENGTH:
                        window = candidate.spec.context_window
                        call.min_context = max(call.min_context, window if window is not None else call.tokens_in)
                    if not attempts.running and (following := attempts.next_candidate(error)) is not None:
                        self.metrics.child(self.metrics.retries, route.name, error.kind).inc()
                        attempts.start(following)
                        now = time.monotonic()
                        rescue = self._rescue(call, attempts, now, self._late_at(call, following, now, eager=eager))
                        if not hedged and len(plan) > 1:
                            lead, lead_started = following, now
                            hedge_at = self._hedge_at(call, lead, lead_started, now, eager=eager)
                if done:
                    continue
                now = time.monotonic()
                if now >= call.deadline:
                    break
                # A slow attempt is never cancelled for time: the next backend is asked as well and the first
                # answer wins, so the attempt that was nearly done can still be the one that answers.
                if now >= hedge_at and not eager:
                    hedge_at = self._hedge_at(call, lead, lead_started, now, eager=False)  # stalled by now?
                if hedge_at <= now:
                    # The lead attempt is slower than it should be (hedge classes: past its backend's p95;
                    # others: once that backend has stalled, or a tail outlier).
                    if (following := attempts.next_candidate(None)) is not None:
                        hedge_at = math.inf
                        hedged = True
                        self.metrics.child(self.metrics.hedges, route.name, "sent").inc()
                        attempts.start(following)
                        # A rescue beside the hedge waits until the hedge, in turn, is late.
                        rescue = self._rescue(call, attempts, now, self._late_at(call, following, now, eager=eager))
                    else:  # none may go now (retry budget, no backend expected in time): the lead is still late
                        hedge_at = now + LOOK_AGAIN_S if attempts.may_hedge_later() else math.inf
                elif now >= rescue.at:
                    # The running attempt is late, or what is left is just enough for the next backend: start it
                    # while it can make the deadline. Before the last chance it is as speculative as a hedge,
                    # and is paid for as one; refused, it waits for the last chance.
                    speculative = rescue.at < rescue.last
                    if (following := attempts.next_candidate(_TOO_SLOW, hedge=speculative)) is not None:
                        rescue = _NO_RESCUE
                        self.metrics.child(self.metrics.retries, route.name, "timeout").inc()
                        attempts.start(following)
                    else:
                        rescue = Rescue(rescue.last, rescue.last) if speculative else _NO_RESCUE
        finally:
            call.upstream_done = time.monotonic()
            attempts.cancel_all()
        raise self._failure(call)

    @staticmethod
    def _rescue(call: Call, attempts: _Attempts, now: float, late: float) -> Rescue:
        """When to start the next backend beside the running attempt, while it can still answer in time. The
        last chance leaves it 1.5 times what it is expected to take (its p95, or the live estimate when
        higher; a quarter of what is left when it has never answered). Sooner, from twice that, once the running
        attempt is `late` (past its p95, `_late_at`): earlier still, the second request is a duplicate the
        first nearly always makes useless (a 1.5 s deadline and a 0.65 s p95 next sent most requests twice
        after 0.2 s). Never, when that backend is not expected to make the deadline anyway."""
        following = attempts.peek()
        if following is None:
            return _NO_RESCUE
        remaining = call.deadline - now
        # Its p95 from past answers, but no less than the live estimate: a backend that has just slowed
        # down still has a fast p95 from before.
        p95 = following.stats.quantile(0.95, stream=call.stream)
        expected = following.expected_latency(now, stream=call.stream)
        if p95 is None and expected == 0:
            need = remaining / 4
        elif 2 * max(p95 or 0.0, expected) < remaining:
            need = max(p95 or 0.0, expected)
        else:
            return _NO_RESCUE
        last = call.deadline - max(1.5 * need, 2 * MIN_ATTEMPT_S)
        return Rescue(max(call.deadline - max(2 * need, 2 * MIN_ATTEMPT_S), min(late, last)), last)

    @staticmethod
    def _late_at(call: Call, lead: Candidate, started: float, *, eager: bool) -> float:
        """When the attempt on `lead` started at `started` is past its backend's p95 (hedging classes: at most
        half the time to the deadline; others, of a backend with no answer yet: the slowest p95 of the route's
        others, and at once when none has any)."""
        if eager:
            p95 = lead.stats.quantile(0.95, stream=call.stream)
            half = (call.deadline - started) / 2
            return started + (half if p95 is None else min(p95, half))
        own = _own_p95(call, lead)
        return started if own is None else started + own

    @staticmethod
    def _hedge_at(call: Call, primary: Candidate, started: float, now: float, *, eager: bool) -> float:
        """When a second request goes to the next backend while the first keeps running; a time not after
        `now` means now.

        Hedging classes (`hedge: true`) send it after the primary's p95, bounded by half the time to the
        deadline. Every other class sends it the moment the primary stalls (STALL_QUORUM requests to it
        overdue, this one or others; `BackendStats.stall_due` says when, so no time is lost polling), however
        short a time this request has waited; one sent to a backend that had stalled already (nothing better
        was left) waits its own p95 first. Otherwise only a tail outlier is hedged: after TAIL_FACTOR times
        the p95 (and at least TAIL_MARGIN_S more). So the requests caught on a backend at the moment it slows
        down leave it together, the later ones without first waiting out a p95 of their own, while one slow
        answer of a healthy backend is not duplicated. A backend with no
        answer yet is judged by what the route's other backends need (the slowest of their p95s), and a
        stream with no reference at all by FIRST_TOKEN_DEFAULT_S: its first token is never waited for
        without a limit. Every hedge is bounded by the retry budget.
        """
        if eager:
            return Dispatcher._late_at(call, primary, started, eager=True)
        stats = primary.stats
        p95 = _own_p95(call, primary)
        if p95 is None:
            return math.inf
        tail = started + max(TAIL_FACTOR * p95, p95 + TAIL_MARGIN_S)
        own = started + p95
        stall = stats.stall_due(now)
        if stall <= started:
            stall = own  # sent to a backend stalled already (nothing better was left): its own p95 first
        if now >= tail or now >= stall:
            return now
        if now < own:
            return min(own, stall)
        return min(tail, stall, now + max(STALL_RECHECK_S, p95 / 4))

    def _won(self, call: Call, answer: Answer, hedged: bool, plan: list[Candidate]) -> None:
        route = call.runtime.route.name
        if answer.candidate is not plan[0]:
            self.metrics.child(self.metrics.fallbacks, route).inc()
        if hedged:
            self.metrics.child(self.metrics.hedges, route, "won" if answer.candidate is not plan[0] else "lost").inc()

    @staticmethod
    def _skip_unavailable(call: Call, unavailable: list[Candidate], now: float) -> None:
        """Why capable backends are out of the plan: ejected (until when, after what) or at maxConcurrency."""
        states = {s.name: s for s in call.runtime.detector.snapshot(now)}
        for candidate in unavailable:
            state = states.get(candidate.name)
            if state is not None and state.state == "half-open":
                call.skipped[candidate.name] = "half-open, its one trial request still out"
            elif state is not None and state.state != "active":
                until = time.strftime("%H:%M:%S", time.gmtime(time.time() + state.remaining_s))
                call.skipped[candidate.name] = f"{state.state} until {until} UTC ({state.reason})"
            else:
                call.skipped[candidate.name] = f"at maxConcurrency ({candidate.spec.max_concurrency} in flight)"

    def _failure(self, call: Call) -> ProxyError | UpstreamError:
        """The error for a call every attempt of which failed, accounting for every backend of the route once:
        tried (its last error), skipped (why) or not tried (why not). A prompt too long for every backend
        that was tried is the backend's own 400, as the app would get it from the provider."""
        route = call.runtime.route.name
        if time.monotonic() >= call.deadline:
            call.not_tried = call.not_tried or "the deadline came first"
            return ProxyError(504, f"deadline exceeded for route {route}: {_accounting(call)}", "deadline_exceeded")
        if call.errors and all(e.kind is FailureKind.CONTEXT_LENGTH for _, e in call.errors):
            return call.errors[-1][1]
        if call.errors and all(e.kind is FailureKind.RATE_LIMITED for _, e in call.errors):
            waits = [e.retry_after for _, e in call.errors if e.retry_after is not None]
            retry_after = str(max(1, round(min(waits)))) if waits else "1"
            return ProxyError(
                429,
                f"every backend of route {route} is rate limited: {_accounting(call)}",
                "rate_limited",
                [("retry-after", retry_after)],
            )
        return ProxyError(
            503, f"no backend of route {route} could serve the request: {_accounting(call)}", "no_backend"
        )

    # ----- one attempt ----------------------------------------------------------------------------------

    async def attempt(self, call: Call, candidate: Candidate) -> Answer:
        """Call one backend; the attempt's handle records every outcome (a cancel abandons it)."""
        upstream = call.runtime.upstreams[candidate.name]
        with Attempt(
            call.runtime, candidate, self.metrics, self.load, stream=call.stream, api=call.api.api, trace=call.trace
        ) as attempt:
            try:
                if call.stream:
                    return await self._first_chunk(call, upstream, attempt)
                # complete() bounds the whole call by its timeout itself: no second timer on the hot path.
                completion = await upstream.complete(
                    call.body,
                    timeout=call.deadline - attempt.started,
                    api=call.api.api,
                    headers=call.headers,
                    trace=attempt.trace_headers,
                )
            except TimeoutError:
                waited = 1000 * (time.monotonic() - attempt.started)
                error = UpstreamError(FailureKind.TIMEOUT, f"no answer within {waited:.0f} ms")
                attempt.fail(error)
                raise error from None
            except StopAsyncIteration:
                error = UpstreamError(FailureKind.SERVER_ERROR, "stream ended before any content")
                attempt.fail(error)
                raise error from None
            except UpstreamError as error:
                attempt.fail(error)
                raise
            answer = Answer(candidate, attempt, completion=completion)
            answer.cost = attempt.succeed(completion.usage, body=completion.body)
            return answer

    @staticmethod
    async def _first_chunk(call: Call, upstream: Upstream, attempt: Attempt) -> Answer:
        """Headers and the first chunk within the deadline (after that the relay's idle bound applies); the
        open stream and its attempt then belong to the caller, who closes both when the app has read it."""
        async with asyncio.timeout_at(_loop_deadline(call.deadline)):
            stream = await upstream.stream(
                call.body,
                timeout=call.deadline - attempt.started,
                api=call.api.api,
                headers=call.headers,
                trace=attempt.trace_headers,
            )
            try:
                first = await anext(stream)
            except BaseException:
                await stream.aclose()
                raise
        attempt.first_byte(first)
        # From here, silence is judged by this backend's normal gaps between chunks, not by the deadline.
        policy = call.runtime.route.priorities[call.priority]
        floor = STREAM_IDLE_FLOOR_S if policy.stream_idle_min is None else policy.stream_idle_min
        # A silence longer than the class's whole first-token deadline is an interruption, history or not.
        ceiling = policy.stream_idle_max or policy.timeout
        stream.limit_idle(attempt.candidate.stats.idle_limit(min(floor, ceiling), ceiling))
        return Answer(attempt.candidate, attempt.hand_over(), stream=stream, first_chunk=first)

    # ----- background probes ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(functools.partial(log_failure, log=log))

    async def _shadow_probe(self, runtime: RouteRuntime, candidate: Candidate, due: float, *, stream: bool) -> None:
        """A max_tokens-capped request to a backend the user's request did not go to, to keep its estimate fresh
        (`due`: when the prober chose it). Streamed when the request that chose it is (`stream`), so it measures
        what ranks streams, the time to first token: a backend's JSON answers never teach it, and streams kept
        ranking a backend that had never had one by its whole answer's time."""
        upstream = runtime.upstreams[candidate.name]
        api = probe_api(candidate.spec)
        stream = stream and api != "embeddings"
        refused = False
        try:
            with Attempt(runtime, candidate, self.metrics, self.load, api=api, stream=stream, shadow=True) as attempt:
                body = runtime.probe_bodies.body(candidate.spec, api)
                try:
                    if stream:
                        usage = await _streamed_probe(upstream, body, api, attempt)
                    else:
                        usage = (await upstream.complete(body, timeout=SHADOW_TIMEOUT_S, api=api)).usage
                except UpstreamError as error:
                    attempt.fail(error)
                    refused = not error.kind.blames_backend and not runtime.probe_bodies.learn(
                        candidate.spec, api, body, error
                    )
                else:
                    attempt.succeed(usage, "shadow")
        finally:
            runtime.shadow.done(candidate.name, due, refused=refused)

    async def probe_ejected(self, runtime: RouteRuntime) -> None:
        """Probe (GET /models, never a completion) every backend whose ejection is over."""
        due = runtime.detector.due_for_probe(time.monotonic())
        results = await asyncio.gather(*(runtime.upstreams[name].probe(timeout=5.0) for name in due))
        for name, ok in zip(due, results, strict=True):
            runtime.detector.probe_result(name, ok, time.monotonic())

    async def aclose(self) -> None:
        """Cancel background probes."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


# Backends not tried again within one call: the key was refused, it asked us to back off, it hung, or the
# prompt is too long for it.
_NEVER_AGAIN = frozenset({FailureKind.AUTH, FailureKind.RATE_LIMITED, FailureKind.TIMEOUT, FailureKind.CONTEXT_LENGTH})
# Failures that go to another backend whatever retryOn says: they are about this backend, not the request.
_ALWAYS_ELSEWHERE = frozenset({FailureKind.AUTH, FailureKind.CONTEXT_LENGTH})
_NONE: dict[str, str] = {}
_SKIP_CODES = ("unsupported_api", "unsupported_parameter", "unsupported_capability", "context_length_exceeded")


_BLIND_TO_LATENCY = frozenset({"ordered", "weighted"})
FAR_SLOWER = 4.0
FAR_SLOWER_MARGIN_S = 1.0
"""Strategies that do not weigh latency still pass over a backend expected to take FAR_SLOWER times (and
FAR_SLOWER_MARGIN_S more than) the fastest one: 8.5 s where a peer needs 0.3 s 'can answer in time' for a
20 s deadline, but no one configuring `ordered` wants that answer."""


def _soonest(entry: tuple[float, Candidate]) -> float:
    return entry[0]


def _without_far_slower(feasible: list[Candidate], available: list[Candidate], stream: bool) -> list[Candidate]:
    """`feasible` less the backends far slower than the fastest `available` one (see FAR_SLOWER), also when
    that one is out of `feasible` for the moment (stalled): the 8.5 s backend must not become the primary
    because its only fast peer has two requests overdue. Answer times alone count: a backend that just
    failed once is not slow (ejection judges failures), and one with no answer yet is not judged."""
    speeds = {c.name: _speed(c, stream) for c in available}
    known = [v for v in speeds.values() if v is not None]
    if len(known) < 2:
        return feasible
    fastest = min(known)
    bound = max(FAR_SLOWER * fastest, fastest + FAR_SLOWER_MARGIN_S)
    return [c for c in feasible if (speed := speeds[c.name]) is None or speed <= bound]


def _speed(candidate: Candidate, stream: bool) -> float | None:
    """The backend's peak-EWMA answer time (first-token time for streams), without failure penalties."""
    stats = candidate.stats
    return stats.ttft.value if stream and stats.ttft.value is not None else stats.latency.value


def _own_p95(call: Call, lead: Candidate) -> float | None:
    """The p95 of `lead` (TTFT for a stream), or while it has none what the route's others need."""
    p95 = lead.stats.quantile(0.95, stream=call.stream)
    return p95 if p95 is not None else _reference_p95(call, lead)


def _reference_p95(call: Call, primary: Candidate) -> float | None:
    """What a backend with no history is expected to need: the slowest p95 of the route's other backends, or
    for streams FIRST_TOKEN_DEFAULT_S when none has answered yet; None for a JSON call with no reference."""
    others = [c.stats.quantile(0.95, stream=call.stream) for c in call.runtime.candidates if c is not primary]
    known = [q for q in others if q is not None]
    if known:
        return max(known)
    return FIRST_TOKEN_DEFAULT_S if call.stream else None


def _fits(candidate: Candidate, min_context: int) -> bool:
    """Whether the backend's window is larger than one that refused the prompt (or it declares none)."""
    window = candidate.spec.context_window
    return not min_context or window is None or window > min_context


def _accounting(call: Call) -> str:
    """Every backend of the route once, in route order: its last error, why it was skipped, or why not tried."""
    tried = dict(call.errors)  # the last error of each
    parts = []
    for candidate in call.runtime.candidates:
        name = candidate.name
        if name in tried:
            parts.append(f"{name}: {tried[name]}")
        elif name in call.skipped:
            parts.append(f"{name}: skipped, {call.skipped[name]}")
        else:
            parts.append(f"{name}: not tried, {call.not_tried or 'no attempt was left for it'}")
    return "; ".join(parts)


class Rescue(NamedTuple):
    """When a call's next backend is started beside its running attempt (`at`), and its last chance (`last`):
    a rescue before that is speculative, paid for from the retry budget as a hedge."""

    at: float
    last: float


_NO_RESCUE = Rescue(math.inf, math.inf)

_TOO_SLOW = UpstreamError(FailureKind.TIMEOUT, "slower than the time left for a failover")
"""What a failover for time is retried as (the route's retryOn must allow timeouts)."""


class _Attempts:
    """The attempts of one call: those running, the backends left to try, and the retry rules."""

    def __init__(self, dispatcher: Dispatcher, call: Call, plan: list[Candidate]) -> None:
        self._dispatcher = dispatcher
        self._call = call
        self._plan = plan
        self.running: dict[asyncio.Task[Answer], Candidate] = {}
        self._refused = False  # the retry budget refused this call an attempt already (counted once)

    def start(self, candidate: Candidate) -> None:
        """Send the call to `candidate`."""
        self._call.attempts += 1
        task = asyncio.get_running_loop().create_task(self._dispatcher.attempt(self._call, candidate))
        self.running[task] = candidate

    def next_candidate(self, after: UpstreamError | None, *, hedge: bool | None = None) -> Candidate | None:
        """The next backend to try after `after` (None: a hedge), if the route's retry policy, its retry
        budget and the deadline allow one more attempt. `hedge` says how the budget counts it (by default,
        a hedge when `after` is None)."""
        call = self._call
        runtime = call.runtime
        retry = runtime.route.retry
        if (spent := self._spent()) is not None:
            call.not_tried = spent
            return None
        if after is not None and after.kind not in retry.retry_on and after.kind not in _ALWAYS_ELSEWHERE:
            call.not_tried = f"{after.kind} is not in the route's retryOn"
            return None
        hedge = after is None if hedge is None else hedge
        candidate = self.peek(hedge=hedge)
        now = time.monotonic()
        if candidate is not None and not runtime.retry_budget.try_acquire_retry(now, hedge=hedge):
            if not self._refused:  # a hedge asked for again is still the one attempt not made
                self._refused = True
                self._dispatcher.metrics.child(self._dispatcher.metrics.retries_refused, runtime.route.name).inc()
            call.not_tried = f"the retry budget was spent ({runtime.retry_budget.describe(now, hedge=hedge)})"
            return None
        return candidate

    def may_hedge_later(self) -> bool:
        """Whether a hedge none may go for now could go later: the retry budget refills and the backends'
        estimates move, but the attempts used and the time left only go one way (`_spent`)."""
        return self._spent() is None

    def _spent(self) -> str | None:
        """Why no attempt may follow for good: the route's retry attempts used, or too little time left."""
        call = self._call
        attempts = call.runtime.route.retry.attempts
        if call.attempts > attempts:
            return f"the route's {attempts} retry attempts were used"
        if call.deadline - time.monotonic() < MIN_ATTEMPT_S:
            return "too little time was left before the deadline"
        return None

    def peek(self, *, hedge: bool = False) -> Candidate | None:
        """The backend a retry or hedge would go to now. Backends not yet tried come first, in plan order;
        only then is one tried again (a route with fewer backends than attempts), and never one that timed
        out, refused the key or asked us to back off. A hedge never goes to a backend expected to miss the
        deadline: it would spend the retry budget on an answer that cannot arrive in time."""
        call = self._call
        now = time.monotonic()
        remaining = call.deadline - now
        busy = {c.name for c in self.running.values()}
        if len(busy) == len(self._plan):
            return None  # every backend of the plan is answering this call already
        tried = {name for name, _ in call.errors}
        barred = {name for name, e in call.errors if e.kind in _NEVER_AGAIN}
        fresh = [c for c in self._plan if c.name not in tried]
        again = [c for c in self._plan if c.name in tried and c.name not in barred]
        detector = call.runtime.detector
        return next(
            (
                c
                for c in (*fresh, *again)
                if c.name not in busy
                and detector.is_available(c.name)
                and _fits(c, call.min_context)
                and not (hedge and c.expected_latency(now, stream=call.stream) >= remaining)
            ),
            None,
        )

    def cancel_all(self) -> None:
        """The call is decided: attempts still running are abandoned (and named, if the call failed)."""
        for task, candidate in self.running.items():
            task.cancel()
            waited = 1000 * (time.monotonic() - self._call.upstream_started)
            self._call.errors.append(
                (candidate.name, UpstreamError(FailureKind.TIMEOUT, f"no answer after {waited:.0f} ms"))
            )


async def _streamed_probe(upstream: Upstream, body: dict[str, Any], api: Api, attempt: Attempt) -> Usage:
    """A shadow probe's streamed answer, read to its end within SHADOW_TIMEOUT_S: its first chunk is the
    attempt's first byte (the backend's time to first token), the rest its gaps. UpstreamError on any failure,
    a cut or silent stream included."""
    try:
        async with asyncio.timeout(SHADOW_TIMEOUT_S):
            answer = await upstream.stream(body, timeout=SHADOW_TIMEOUT_S, api=api)
            try:
                async for _ in answer:
                    if attempt.ttft is None:
                        attempt.first_byte()
                    else:
                        attempt.chunk()
            finally:
                await answer.aclose()
    except TimeoutError:
        raise UpstreamError(FailureKind.TIMEOUT, f"no whole answer within {SHADOW_TIMEOUT_S:g}s") from None
    if attempt.ttft is None:
        raise UpstreamError(FailureKind.SERVER_ERROR, "stream ended before any content")
    return answer.usage


async def _first_done(tasks: Collection[asyncio.Task[Answer]], timeout: float) -> list[asyncio.Task[Answer]]:  # noqa: ASYNC109
    """The tasks done once one of them is (or `timeout` seconds have passed): asyncio.wait(FIRST_COMPLETED)
    without the checks and sets it makes around that, once a request or more."""
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()

    def wake(_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(timeout, wake, None)
    for task in tasks:
        task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        for task in tasks:
            task.remove_done_callback(wake)
    return [task for task in tasks if task.done()]


def _loop_deadline(deadline: float) -> float:
    """`deadline` (time.monotonic) on the event loop's clock, for asyncio.timeout_at."""
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
