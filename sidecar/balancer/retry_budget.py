"""Retry budget (Linkerd/Finagle): over its window (1 s buckets: this second and the 9 before), retries may
add budgetPercent of that window's requests plus a reserve of 10 a second, so an outage never multiplies load;
speculative hedges never take the part of it that fail-overs after a real error need."""

from __future__ import annotations

import math

WINDOW_S = 10.0
"""How far back 'recent' reaches (Linkerd's ttl)."""
BUCKETS = 10
"""Window granularity: 1 s buckets, so old traffic ages out smoothly."""
MIN_RETRIES_PER_S = 10
"""Linkerd's minRetriesPerSecond: a reserve of this many retries a second, over the window (100 in 10 s), on top
of budgetPercent, as Finagle and tower count it: enough that a quiet route fails over every request while a
backend is being ejected, and that the requests caught on a backend that slows down can all hedge at once."""
FAILOVER_SHARE = 0.5
"""The part of the reserve hedges may not use: it stays for fail-overs after a real error (and for
continuations and deadline rescues), which are a request's last chance, where a hedge backs up an attempt that
may still answer."""


class RetryBudget:
    """A sliding window of request, fail-over and hedge counts for one route. Call `record_request` once per
    incoming request (not per attempt) and `try_acquire_retry` before each retry or hedge."""

    __slots__ = ("_epochs", "_failovers", "_hedges", "_ratio", "_requests", "_reserve", "_width")

    def __init__(
        self,
        retry_budget_percent: float,
        *,
        window: float = WINDOW_S,
        buckets: int = BUCKETS,
        min_retries_per_second: float = MIN_RETRIES_PER_S,
    ) -> None:
        self._ratio = retry_budget_percent / 100.0
        self._width = window / buckets
        self._reserve = min_retries_per_second * window
        self._epochs = [-1] * buckets
        self._requests = [0] * buckets
        self._failovers = [0] * buckets
        self._hedges = [0] * buckets

    def record_request(self, now: float) -> None:
        """One request arrived."""
        self._requests[self._bucket(now)] += 1

    def try_acquire_retry(self, now: float, *, hedge: bool = False) -> bool:
        """Whether a retry (`hedge`: a speculative second request beside one still running) is allowed now; if
        so it is counted. Allowed while the window's retries and hedges stay within budgetPercent of its
        requests plus the reserve; a hedge only while FAILOVER_SHARE of the reserve would be left."""
        current = self._bucket(now)
        requests, failovers, hedges = self._window(current)
        if failovers + hedges + 1 > self._allowed(requests, hedge=hedge):
            return False
        (self._hedges if hedge else self._failovers)[current] += 1
        return True

    def describe(self, now: float, *, hedge: bool = False) -> str:
        """What the window has spent, against what it allows a retry (`hedge`: a hedge), for an error message."""
        requests, failovers, hedges = self._window(self._bucket(now))
        what = "hedges may use" if hedge else "allowed"
        return (
            f"{failovers} fail-overs and {hedges} hedges in the last {self._width * len(self._epochs):g} s,"
            f" {math.floor(self._allowed(requests, hedge=hedge))} {what}: {100 * self._ratio:g}% of {requests} requests"
            f" plus {self._reserve:g}"
            + (f", less {FAILOVER_SHARE * self._reserve:g} kept for fail-overs" if hedge else "")
        )

    def _allowed(self, requests: int, *, hedge: bool) -> float:
        """How many retries and hedges the window allows in all before a retry (`hedge`: a hedge) is refused."""
        reserve = self._reserve * (1 - FAILOVER_SHARE) if hedge else self._reserve
        return requests * self._ratio + reserve

    def _window(self, current: int) -> tuple[int, int, int]:
        """Requests, fail-overs and hedges in the window that ends with bucket `current`."""
        epoch = self._epochs[current]
        requests = failovers = hedges = 0
        for i, e in enumerate(self._epochs):
            if epoch - e < len(self._epochs):
                requests += self._requests[i]
                failovers += self._failovers[i]
                hedges += self._hedges[i]
        return requests, failovers, hedges

    def _bucket(self, now: float) -> int:
        """Index of the bucket for `now`, cleared if it last held an older window's counts."""
        epoch = int(now // self._width)
        i = epoch % len(self._epochs)
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._requests[i] = 0
            self._failovers[i] = 0
            self._hedges[i] = 0
        return i
