"""Exploration without slow paths: the backends a request is not sent to still get a background,
max_tokens-capped copy now and then, so their estimates stay fresh and a backend that recovers wins its
traffic back within seconds, while no user waits on it."""

from __future__ import annotations

from collections.abc import Sequence

from .candidates import Candidate

STALE_AFTER_S = 2.0
"""A backend with no outcome for this long is due for a shadow probe."""
MIN_INTERVAL_S = 1.0
"""At most one shadow probe per backend per this interval."""
BACKOFF_AFTER = 3
FAILED_BACKOFF_MAX_S = 8.0
"""A backend whose latest outcome failed is probed at the usual pace (after STALE_AFTER_S without news), not
as soon as the probe is back: a half-open trial that fails closes the way again. Past BACKOFF_AFTER failures
in a row (after 1 in 16 probes of a backend failing half its requests, every probe of one that is down) the wait
doubles per failure, up to this; so a backend that fails half its requests is still seen within seconds
once it recovers, and one that is down is never probed at the pace of the app's requests."""
PATIENCE_S = MIN_INTERVAL_S
"""A shadow probe still running after this does not hold back the next one: the backend it measures may
have recovered meanwhile (an 8.5 s probe sent just before a recovery would otherwise hide it for 8.5 s). So a
degraded backend gets one probe a second, the most any backend gets, and a recovery is seen within about a
second plus one of its answers (it was 2 s: traffic came back 1.2-5.9 s after a recovery on drawn schedules)."""


class ShadowProber:
    """Per-route choice of shadow probes: at most one in flight and one per `min_interval` per backend.
    Probes are only ever triggered by real requests, so an idle route costs nothing."""

    __slots__ = ("_in_flight", "_min_interval", "_sent", "_stale_after")

    def __init__(self, *, stale_after: float = STALE_AFTER_S, min_interval: float = MIN_INTERVAL_S) -> None:
        self._stale_after = stale_after
        self._min_interval = min_interval
        self._sent: dict[str, float] = {}
        self._in_flight: set[str] = set()

    def due(self, ranked: Sequence[Candidate], now: float) -> list[Candidate]:
        """The non-primary candidates of this request that are stale and may be probed now; they are
        marked in flight. Pass the eligible, ranked list (ejected backends are probed by ejection, not
        here). Feed each probe through the backend's stats as usual, then call `done`."""
        due = []
        for candidate in ranked[1:]:
            # A backend whose latest answer came in under half its estimate, or that answered after failing,
            # may be recovering: it is probed again as soon as that probe is back, so the few answers that
            # prove it come within a second or two.
            # A failure ends that (`PeakEWMA.observe_at_least`): the trial failed, and each failure in a row
            # then doubles the wait for the next (`FAILED_BACKOFF_MAX_S`).
            stats = candidate.stats
            recovering = stats.recovering
            seen = stats.last_observed
            if not recovering and seen is not None and now - seen <= self._quiet(stats.failed_in_row):
                continue
            name = candidate.name
            sent = self._sent.get(name)
            if sent is not None and (
                (not recovering and now - sent < self._min_interval)
                or (name in self._in_flight and now - sent < PATIENCE_S)
            ):
                continue
            self._sent[name] = now
            self._in_flight.add(name)
            due.append(candidate)
        return due

    def _quiet(self, failed_in_row: int) -> float:
        """Seconds without news after which a backend is probed: longer while its latest outcomes failed."""
        if failed_in_row <= BACKOFF_AFTER:
            return self._stale_after
        backoff = self._stale_after * 2.0 ** min(failed_in_row - BACKOFF_AFTER, 16)
        return min(backoff, max(FAILED_BACKOFF_MAX_S, self._stale_after))

    def done(self, name: str) -> None:
        """The shadow probe to `name` finished (whatever its outcome)."""
        self._in_flight.discard(name)
