"""Retry budget (Linkerd/Finagle): retries may add at most budgetPercent to the recent request rate, so an
outage never multiplies load, plus a small per-second floor so a quiet route can still retry."""

from __future__ import annotations

WINDOW_S = 10.0
"""How far back 'recent' reaches (Linkerd's ttl)."""
BUCKETS = 10
"""Window granularity: 1 s buckets, so the floor is per second and old traffic ages out smoothly."""
MIN_RETRIES_PER_S = 10
"""Retries always allowed per second, Linkerd's minRetriesPerSecond: enough that a quiet route fails
over every request while a backend is being ejected, too few to amplify an outage meaningfully."""


class RetryBudget:
    """A sliding window of request and retry counts for one route. Call `record_request` once per incoming
    request (not per attempt) and `try_acquire_retry` before each retry or hedge."""

    __slots__ = ("_epochs", "_min_per_bucket", "_ratio", "_requests", "_retries", "_width")

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
        self._min_per_bucket = min_retries_per_second * self._width
        self._epochs = [-1] * buckets
        self._requests = [0] * buckets
        self._retries = [0] * buckets

    def record_request(self, now: float) -> None:
        """One request arrived."""
        self._requests[self._bucket(now)] += 1

    def try_acquire_retry(self, now: float) -> bool:
        """Whether a retry is allowed now; if so it is counted. Allowed while the window's retries stay
        within budgetPercent of its requests, or the current second has fewer than the floor."""
        current = self._bucket(now)
        epoch = self._epochs[current]
        requests = retries = 0
        for i, e in enumerate(self._epochs):
            if epoch - e < len(self._epochs):
                requests += self._requests[i]
                retries += self._retries[i]
        if retries + 1 > requests * self._ratio and self._retries[current] + 1 > self._min_per_bucket:
            return False
        self._retries[current] += 1
        return True

    def _bucket(self, now: float) -> int:
        """Index of the bucket for `now`, cleared if it last held an older window's counts."""
        epoch = int(now // self._width)
        i = epoch % len(self._epochs)
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._requests[i] = 0
            self._retries[i] = 0
        return i
