"""Live per-backend estimates from real traffic: peak-EWMA latency and TTFT, in-flight requests,
failure rate and recent quantiles. Pure bookkeeping: every method takes `now` (monotonic seconds)."""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict, deque

from .outcome import FailureKind

DECAY_S = 10.0
"""Time constant of the latency estimates and failure rate (Finagle's and linkerd's default)."""
FAILURE_PENALTY_S = 5.0
"""Seconds added per unit of failure rate: a failure costs the user a failover, so a backend failing 10% of
requests (+0.5 s) loses to a healthy one up to half a second slower."""
WINDOW = 128
IDLE_FACTOR = 4.0
IDLE_MIN_STREAMS = 3
"""A stream's idle limit is IDLE_FACTOR x the p95 of the longest chunk gaps of its backend's recent streams,
once IDLE_MIN_STREAMS have completed (before that, the class's ceiling)."""
"""Recent samples kept for quantiles (hedging delay, status p50/p95)."""
PRIOR_SUCCESSES = 1.0
"""Pseudo-successes in the failure rate, so one failure on a quiet backend reads as 50%, not 100%."""


STALL_QUORUM = 2
"""Requests overdue at the same time that show a backend has stalled; one overdue request is just its tail."""

RECOVERY_SAMPLES = 3
"""Answers in a row at under half the estimate that prove a recovery: the estimate drops to their worst."""


class PeakEWMA:
    """A latency estimate that rises to a new peak at once and decays toward lower samples with time
    constant `decay` (Finagle/linkerd), so one slow answer is believed at once and forgotten gradually.

    Plain decay takes ~30 s to forget an 8.5 s peak; a backend that has recovered would lose traffic it
    deserves all that time. So `RECOVERY_SAMPLES` answers in a row at under half the estimate (real or
    shadow traffic) reset it to the slowest of them: a recovery is believed after a few answers, while a
    single fast answer still cannot hide a slow backend. An answer to a request sent before the first answer
    of the latest such run is old news and changes nothing: the 8.5 s probe sent just before a recovery
    would otherwise restart the count, or raise the estimate again right after the recovery was proven."""

    __slots__ = ("_decay", "_fast_since", "_low_count", "_low_max", "_stamp", "value")

    def __init__(self, decay: float = DECAY_S) -> None:
        self._decay = decay
        self._stamp = 0.0
        self._low_count = 0
        self._low_max = 0.0
        self._fast_since = -math.inf
        """When the request behind the first answer of the latest run under half the estimate was sent."""
        self.value: float | None = None
        """Seconds; None until the first sample."""

    @property
    def recovering(self) -> bool:
        """Whether the latest answers came in under half the estimate: a recovery that a few more prove."""
        return self._low_count > 0

    def observe(self, sample: float, now: float) -> None:
        """A measured duration (of a request sent `sample` seconds before `now`): a new peak replaces the
        estimate, a lower one is blended in by elapsed time."""
        value = self.value
        if now - sample < self._fast_since:
            return
        if value is None or sample >= value:
            self.value = sample
            self._low_count = 0
        else:
            keep = math.exp(-max(now - self._stamp, 0.0) / self._decay)
            self.value = value * keep + sample * (1.0 - keep)
            if sample < value / 2:
                if self._low_count == 0:
                    self._fast_since = now - sample
                self._low_max = sample if self._low_count == 0 else max(self._low_max, sample)
                self._low_count += 1
                if self._low_count >= RECOVERY_SAMPLES:
                    self.value = min(self.value, self._low_max)
                    self._low_count = 0
            else:
                self._low_count = 0
        self._stamp = now

    def end_run(self, sample: float, now: float) -> bool:
        """A request sent `sample` seconds before `now` went wrong: it ends a run of fast answers, unless it was
        sent before that run began (old news: False)."""
        if now - sample < self._fast_since:
            return False
        self._low_count = 0
        return True

    def observe_at_least(self, bound: float, now: float) -> None:
        """A duration known only as a lower bound (failure, timeout, cancelled hedge): may raise, never lower.
        It also ends a run of fast answers: a backend that fails right after one fast answer has not shown a
        recovery, and would otherwise stay `recovering`, probed after every request, through its failures.
        Like an answer, it is old news (changes nothing) when its request was sent before that run began:
        requests caught before a recovery and given up after it would otherwise restart the proof again and
        again (traffic came back 8.6-10.6 s after the recovery instead of 0.8-1.4 s)."""
        if not self.end_run(bound, now):
            return
        if self.value is None or bound > self.value:
            self.value = bound
            self._stamp = now


IMPROBABLE_RUN = 0.1
"""A run of successes this unlikely at the failure share read when it began shows the backend has changed."""
QUIET_S = DECAY_S / 2
"""Successes only, for this long since the latest failure, also clear the failures: a backend kept away
(ejected, or behind its peers) for a while is not held to a share that its silence cannot change."""
PROBED_RUN = 20
"""A failing backend whose recovery takes at most this many successes in a row to prove is probed again as
soon as each probe is back (`recovering`); one with fewer failures is left to time decay and its traffic."""
RECENT_OUTCOMES = 20
"""Outcomes whose failure share sets how long a run of successes must be to show a change. The time-decayed
rate is no measure of that: a backend that was primary for 10 s and then failed 48% of its few requests read
8%, so 25 successes in a row were needed, it was not probed for them, and it got its traffic back only 5 s
after its latest failure (4-9 s after it recovered, on drawn seed 3)."""


class FailureRate:
    """Share of failed outcomes over roughly the last `decay` seconds (time-decayed counts): a backend failing
    44% reads about that whether it gets 5 or 30 requests a second, and failures are forgiven with time even
    without traffic. A lone failure among a busy backend's many successes is a small share of them.

    A run of successes that would be improbable (under `IMPROBABLE_RUN`) at the share of failures among the latest
    `RECENT_OUTCOMES` when it began shows the backend has changed, and so do successes only for `QUIET_S`: the
    counts restart from that run, so a backend that recovered while only probes reach it is cleared by a few of them
    (4-5 after failing 44%), and one kept away for a while (ejected, or behind its peers) by its first answer. Time
    decay alone would not do it: it shrinks a busy backend's many outcomes and its failures alike. A backend that
    keeps failing has such runs now and then too: a failure within as many outcomes again shows the backend
    had not changed, and the counts from before the restart come back."""

    __slots__ = (
        "_before",
        "_decay",
        "_failed",
        "_failed_at",
        "_needed",
        "_recent",
        "_recent_failed",
        "_run",
        "_since",
        "_stamp",
        "_total",
    )

    def __init__(self, decay: float = DECAY_S) -> None:
        self._decay = decay
        self._failed = 0.0
        self._total = 0.0
        self._stamp = 0.0
        self._run = 0
        """Successes since the latest failure."""
        self._failed_at = 0.0
        self._needed = 0
        """Successes in a row that clear the latest failure: improbable at the share of failures among the
        latest `RECENT_OUTCOMES` right after it."""
        self._recent: deque[bool] = deque(maxlen=RECENT_OUTCOMES)
        self._recent_failed = 0
        self._before: tuple[float, float] | None = None
        """The failed and total counts the latest restart set aside, until the new run confirms it."""
        self._since = 0
        """Outcomes since that restart."""

    def _keep(self, now: float) -> float:
        return math.exp(-max(now - self._stamp, 0.0) / self._decay)

    @property
    def recovering(self) -> bool:
        """Whether successes since the latest failures have begun a run that a few more would make improbable
        at their rate (at most `PROBED_RUN` in all): a recovery worth probing for at once."""
        return 0 < self._run < self._needed <= PROBED_RUN

    def observe(self, failed: bool, now: float) -> None:
        """One outcome that says something about the backend."""
        keep = self._keep(now)
        self._failed = self._failed * keep + failed
        self._total = self._total * keep + 1.0
        self._stamp = now
        recent = self._recent
        if len(recent) == RECENT_OUTCOMES:
            self._recent_failed -= recent[0]
        recent.append(failed)
        self._recent_failed += failed
        if self._before is not None:
            failed_before, total_before = self._before
            self._before = (failed_before * keep, total_before * keep)
            self._since += 1
            if failed:  # the restart was a lucky run: what came before it counts again
                self._failed += failed_before * keep
                self._total += total_before * keep
                self._before = None
            elif self._since >= self._needed:
                self._before = None
        if failed:
            self._run = 0
            self._failed_at = now
            share = self._recent_failed / (len(recent) + PRIOR_SUCCESSES)
            self._needed = math.ceil(math.log(IMPROBABLE_RUN) / math.log1p(-share))
            return
        self._run += 1
        if self._failed and (self._run >= self._needed or now - self._failed_at >= QUIET_S):
            self._before = (self._failed, self._total - self._run)
            self._since = 0
            self._failed = 0.0
            self._total = float(self._run)

    def value(self, now: float) -> float:
        """0..1; starts at 0 and, once failures stop, decays toward 0 (or drops to 0 after a run of successes
        improbable at its rate)."""
        if not self._failed:
            return 0.0
        keep = self._keep(now)
        return self._failed * keep / (self._total * keep + PRIOR_SUCCESSES)


class RecentWindow:
    """The last `size` samples, also kept sorted as they arrive (bisect), so the quantiles that the hedging
    delay and stall detection read on every request cost an index, not a sort."""

    __slots__ = ("_next", "_samples", "_size", "_sorted")

    def __init__(self, size: int = WINDOW) -> None:
        self._size = size
        self._samples: list[float] = []
        self._next = 0
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: float) -> None:
        """Record a sample, overwriting the oldest once full."""
        if len(self._samples) < self._size:
            self._samples.append(sample)
        else:
            oldest = self._samples[self._next]
            self._samples[self._next] = sample
            self._next = (self._next + 1) % self._size
            del self._sorted[bisect.bisect_left(self._sorted, oldest)]
        bisect.insort(self._sorted, sample)

    def quantile(self, q: float) -> float | None:
        """Nearest-rank quantile (q in 0..1) of the window, or None when it is empty."""
        ordered = self._sorted
        if not ordered:
            return None
        return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


class BackendStats:
    """Everything the balancer knows about one backend, fed by the request path:
    `token = start(now)`, optionally `first_byte(token, now)` for streams, then `finish(token, now, failure)`
    or `cancel(token, now)` for a hedge loser. Finishing an unknown token is a no-op, so cleanup can be
    unconditional.

    Priors: a backend never observed is expected to take 0 s while idle (optimistic, so a new backend is
    explored by one request) and `inf` while that first request is in flight (so a burst does not herd onto
    an unknown backend).
    """

    __slots__ = (
        "_answered_since",
        "_awaiting",
        "_first_token_wait",
        "_fresh",
        "_given_up",
        "_next_token",
        "_penalty",
        "_slow_answer",
        "_started",
        "_streams",
        "failed_in_row",
        "failures",
        "gaps",
        "last_observed",
        "last_sent",
        "latencies",
        "latency",
        "news_from",
        "stream_news_from",
        "stream_sent",
        "ttft",
        "ttfts",
    )

    def __init__(
        self, *, decay: float = DECAY_S, failure_penalty: float = FAILURE_PENALTY_S, window: int = WINDOW
    ) -> None:
        self.latency = PeakEWMA(decay)
        self.ttft = PeakEWMA(decay)
        self.latencies = RecentWindow(window)
        self.ttfts = RecentWindow(window)
        self.gaps = RecentWindow(window)
        """The longest silence between two chunks of each recent complete stream."""
        self.failures = FailureRate(decay)
        self.failed_in_row = 0
        """Outcomes blamed on the backend that failed since its latest success (probes' backoff)."""
        self.last_observed: float | None = None
        """When an outcome last told us about this backend (success or its fault); None if never."""
        self.last_sent: float | None = None
        """When the app's newest request (not a shadow probe) to this backend was sent; None if never."""
        self.news_from: float | None = None
        """When the request behind the newest such outcome was sent: how old what we know of the backend is.
        An 8.5 s answer tells how the backend was 8.5 s ago, not how it is now."""
        self.stream_sent: float | None = None
        """`last_sent` for the app's streams alone."""
        self.stream_news_from: float | None = None
        """`news_from` for first tokens alone: when the stream behind the newest first token (or failure before
        one) was sent. JSON answers say nothing of first tokens, which rank streams."""
        self._penalty = failure_penalty
        self._started: dict[int, float] = {}
        self._awaiting: OrderedDict[int, float] = OrderedDict()  # not yet a first byte; oldest first
        self._answered_since = -math.inf  # start of the latest-started request that succeeded
        # The requests of `_awaiting` started since then, oldest first: the only ones that can show a stall or
        # make the backend look slow. Kept apart so those reads never walk the stragglers before them.
        self._fresh: OrderedDict[int, float] = OrderedDict()
        self._streams: set[int] = set()  # tokens of streams: overdue past the TTFT p95, not the answer p95
        # Starts of the latest attempts abandoned while overdue (hedge losers): still evidence of a stall
        # after the hedges that replaced them have answered.
        self._given_up: deque[float] = deque(maxlen=STALL_QUORUM)
        # How long the latest stream given up (or failed) without a first token had waited, when that was longer
        # than its usual first token (`_waited_for_first_token`), until an answer
        # comes sooner than that: streams rank the backend no better, though their TTFT estimate (first tokens
        # seen) is from before it slowed down and nothing of it is in flight now.
        self._first_token_wait = 0.0
        # The latest answer (or first token) since then that came later still: streams rank it no better either.
        self._slow_answer = 0.0
        self._next_token = 0

    @property
    def recovering(self) -> bool:
        """Whether its latest answers begin to prove a recovery, from slowness or from failures, that a few
        more answers would complete. (`ttft.recovering` says the same of first tokens, which only streams
        measure.)"""
        return self.latency.recovering or self.failures.recovering

    @property
    def in_flight(self) -> int:
        """Requests (including shadow probes and hedges) started and not yet finished."""
        return len(self._started)

    def start(self, now: float, *, stream: bool = False, shadow: bool = False) -> int:
        """An attempt begins (`shadow`: a shadow probe, not the app's); returns the token to finish it with."""
        if not shadow:
            self.last_sent = now
            if stream:
                self.stream_sent = now
        token = self._next_token
        self._next_token = token + 1
        self._started[token] = now
        self._awaiting[token] = now
        self._fresh[token] = now
        if stream:
            self._streams.add(token)
        return token

    def first_byte(self, token: int, now: float) -> None:
        """A stream's first content chunk arrived: records TTFT."""
        started = self._awaiting.pop(token, None)
        self._fresh.pop(token, None)
        if started is not None:
            self.ttft.observe(now - started, now)
            self.ttfts.add(now - started)
            self._answered_within(now - started)
            self._first_token_news(started)

    def _answered_within(self, seconds: float) -> None:
        """A first byte (or a whole answer) came this soon: a longer wait for a first token is history. One
        that came later still, while a stream's wait stands, is how slow the backend is now: a stream is hedged
        within a second of a backend slowing down, and a bound of that second alone let the next streams back
        to a backend whose answers (shadow probes, JSON) took 5 s."""
        wait = self._first_token_wait
        if seconds < wait:
            self._first_token_wait = self._slow_answer = 0.0
        elif wait:
            self._slow_answer = seconds

    def finish(self, token: int, now: float, failure: FailureKind | None = None) -> None:
        """The attempt ended: a success (failure=None) is a latency sample; a failure counts in the failure
        rate and is only a lower bound on latency, so a fast 429/5xx never makes the backend look fast."""
        stream = token in self._streams
        no_first_token = stream and token in self._awaiting
        started = self._release(token)
        if started is None or (failure is not None and not failure.blames_backend):
            return
        elapsed = now - started
        self.failed_in_row = 0 if failure is None else self.failed_in_row + 1
        if failure is None:
            self.latency.observe(elapsed, now)
            self.latencies.add(elapsed)
            self._answered(started)
            if not stream:  # a stream's first token was judged at first_byte; its whole length says nothing of it
                self._answered_within(elapsed)
        else:
            if no_first_token:
                self._waited_for_first_token(elapsed)
                self._first_token_news(started)
                self.ttft.end_run(elapsed, now)
            self.latency.observe_at_least(elapsed, now)
        self.failures.observe(failure is not None, now)
        self.last_observed = now
        news = self.news_from
        if news is None or started > news:
            self.news_from = started

    def _waited_for_first_token(self, waited: float) -> None:
        """A stream ended (failed, or was given up) after `waited` seconds without a first token. Longer than the
        backend's usual first token, that wait bounds how streams rank it. A quicker end (an immediate 5xx) says
        nothing of its first tokens and is the failure rate's: as a bound, every answer slower than it (any JSON
        answer) kept streams off a backend that had recovered (seed 3 of the drawn incident: 26 of 144 streams
        went back to it, against 143 of 190 JSON requests)."""
        usual = self.ttft.value if self.ttft.value is not None else self.latency.value
        if usual is None or waited > usual:
            self._first_token_wait = max(self._first_token_wait, waited)

    def _first_token_news(self, started: float) -> None:
        """A stream sent at `started` told of the backend's first tokens (one came, or it failed before one)."""
        news = self.stream_news_from
        if news is None or started > news:
            self.stream_news_from = started

    def _answered(self, started: float) -> None:
        """A request sent at `started` succeeded: the backend answers again, and requests still waiting from
        before it are stragglers (amortised: each leaves `_fresh` once)."""
        if started <= self._answered_since:
            return
        self._answered_since = started
        fresh = self._fresh
        while fresh and next(iter(fresh.values())) < started:
            fresh.popitem(last=False)

    def cancel(self, token: int, now: float) -> None:
        """We abandoned the attempt (hedge loser): it would have taken at least this long."""
        waiting, stream = token in self._awaiting, token in self._streams
        started = self._release(token)
        if started is None:
            return
        if waiting and stream:
            self._waited_for_first_token(now - started)
            self.ttft.end_run(now - started, now)
        self.latency.observe_at_least(now - started, now)
        if waiting:
            overdue = self.quantile(0.95, stream=stream)
            if overdue is not None and now - started > overdue:
                self._given_up.append(started)

    def _release(self, token: int) -> float | None:
        self._awaiting.pop(token, None)
        self._fresh.pop(token, None)
        self._streams.discard(token)
        return self._started.pop(token, None)

    def expected_latency(self, now: float, *, load_sensitive: bool, stream: bool = False) -> float:
        """Seconds a new request is expected to take (to first byte when `stream`), for ranking.

        Peak-EWMA, raised to the age of the oldest request still waiting for its first byte (a backend that
        stopped answering looks slow at once, not after its first slow answer) and for streams to the wait of
        the latest stream given up without a first token and to the latest slower answer since, times
        (in_flight + 1) only when `load_sensitive` (self-hosted or concurrency-limited), plus failure rate *
        penalty.
        """
        estimate = self.ttft.value if stream and self.ttft.value is not None else self.latency.value
        if stream and estimate is not None:
            estimate = max(estimate, self._first_token_wait, self._slow_answer)
        if estimate is None:
            return math.inf if self._started else 0.0
        # Requests still waiting count as slow ones, except those older than a request that has since
        # succeeded: the backend answers again, and one straggler must not hide a recovery.
        for started in self._fresh.values():  # the oldest
            estimate = max(estimate, now - started)
            break
        if load_sensitive:
            estimate *= len(self._started) + 1
        return estimate + self.failures.value(now) * self._penalty

    def stalled(self, now: float) -> bool:
        """Whether STALL_QUORUM requests started since the latest success are overdue, each waiting for a first
        byte past the backend's p95 (TTFT p95 for streams, answer p95 otherwise), or abandoned for a hedge
        while overdue: the backend itself has slowed down, not just one request to it."""
        return self.stall_due(now) <= now

    def stall_due(self, now: float) -> float:
        """When the backend has stalled or will have (see `stalled`) if none of its requests in flight gets an
        answer meanwhile: the moment the last request of the quorum became (or becomes) overdue, `inf` when
        too few are out to make the quorum. The request path waits for exactly that moment instead of looking
        again and again, and can tell whether a request was sent before the stall or after it."""
        if len(self._fresh) + len(self._given_up) < STALL_QUORUM:
            return math.inf
        since = self._answered_since
        answer = self.quantile(0.95)
        if answer is None:
            return now if sum(1 for started in self._given_up if started >= since) >= STALL_QUORUM else math.inf
        first_byte = self.quantile(0.95, stream=True) or answer
        sooner = min(answer, first_byte)
        # The STALL_QUORUM earliest times at which a request was or will be overdue, sorted. One given up was
        # overdue when it was abandoned, by now at the latest.
        due = sorted(min(started + sooner, now) for started in self._given_up if started >= since)
        for token, started in self._fresh.items():  # oldest first
            if len(due) == STALL_QUORUM and started + sooner >= due[-1]:
                break  # every later request is overdue later still
            bisect.insort(due, started + (first_byte if token in self._streams else answer))
            del due[STALL_QUORUM:]
        return due[-1] if len(due) == STALL_QUORUM else math.inf

    def idle_limit(self, floor: float, ceiling: float) -> float:
        """How long a stream of this backend may go without a chunk before it counts as stalled:
        IDLE_FACTOR times the p95 of its streams' longest silences, within [floor, ceiling]; the ceiling
        until IDLE_MIN_STREAMS streams have been seen."""
        if len(self.gaps) < IDLE_MIN_STREAMS:
            return ceiling
        p95 = self.gaps.quantile(0.95) or 0.0
        return min(max(IDLE_FACTOR * p95, floor), ceiling)

    def quantile(self, q: float, *, stream: bool = False) -> float | None:
        """Recent latency (TTFT when `stream`, falling back to latency) quantile; the hedging delay uses 0.95."""
        if stream and len(self.ttfts):
            return self.ttfts.quantile(q)
        return self.latencies.quantile(q)

    def snapshot(self, now: float) -> dict[str, float | int | None]:
        """Live estimates for /debug/backends, status and load reports (seconds)."""
        return {
            "latency_ewma_s": self.latency.value,
            "ttft_ewma_s": self.ttft.value,
            "latency_p50_s": self.latencies.quantile(0.5),
            "latency_p95_s": self.latencies.quantile(0.95),
            "ttft_p95_s": self.ttfts.quantile(0.95),
            "in_flight": len(self._started),
            "failure_rate": self.failures.value(now),
            "since_observed_s": None if self.last_observed is None else now - self.last_observed,
        }
