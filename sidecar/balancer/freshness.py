"""Exploration without slow paths: the backends a request is not sent to still get a background,
max_tokens-capped copy now and then, so their estimates stay fresh and a backend that recovers wins its
traffic back within seconds, while no user waits on it."""

from __future__ import annotations

from collections.abc import Sequence

from .candidates import Candidate
from .estimator import RECOVERY_SAMPLES, BackendStats

STALE_AFTER_S = 2.0
"""A backend is due for a shadow probe once the app's newest request to it, and the request behind its newest
outcome, were both sent this long ago. Counted from the sends, not the answers: a degraded backend's 8.5 s
answers, arriving a second apart, would otherwise keep it looking fresh, and it got no probe for up to one slow
answer's length (7-10 s gaps on drawn schedules, each a possible delay in seeing its recovery). The app's own
requests count when they are sent: a healthy backend whose answers take 10 s is measured by the traffic it
carries, not probed besides."""
MIN_INTERVAL_S = 1.0
"""At most one shadow probe per backend per this interval, but while it may be recovering (`CONFIRMING`)."""
BACKOFF_AFTER = 3
FAILED_BACKOFF_MAX_S = 8.0
"""A backend whose latest outcome failed is probed at the usual pace (after STALE_AFTER_S without news), not
as soon as the probe is back: a half-open trial that fails closes the way again. Past BACKOFF_AFTER failures
in a row (after 1 in 16 probes of a backend failing half its requests, every probe of one that is down) the wait
doubles per failure, up to this, counted from the latest failure's arrival or the latest probe, whichever is
later (a failure that takes 30 s to arrive does not make the backend look stale for longer); so a backend that
fails half its requests is still seen within seconds once it recovers, and one that is down is never probed
at the pace of the app's requests."""
PATIENCE_S = MIN_INTERVAL_S
"""A shadow probe still running after this does not hold back the next one: the backend it measures may
have recovered meanwhile (an 8.5 s probe sent just before a recovery would otherwise hide it for 8.5 s). So a
degraded backend gets one probe a second, the most any backend gets outside a recovery's proof, and a recovery
is seen within about a second plus one of its answers (it was 2 s: traffic came back 1.2-5.9 s after a recovery
on drawn schedules)."""

CONFIRMING = RECOVERY_SAMPLES - 1
"""Probes in flight at once to a backend that may be recovering: the rest of a latency recovery's proof, sent
side by side. One after the other, as each came back, the proof took three answers' time after the first fast
one (traffic came back 1.4-4.6 s after a recovery on drawn schedules, against the one healthy answer's time a
router learning from answers could take); side by side it takes one. A failure ends the run."""


REFUSED_S = 30.0
"""A backend that refused a shadow probe as a bad request (an error that is the request's fault: a model that
needs a field the probe's fixed body lacks, say) is not probed again for this long. The probe would be refused
every time, and the refusal says nothing of the backend's health, so it ended no recovery run: such a backend
was probed on every request while one was open. (A refused `max_tokens` is not such a refusal: the next probe
caps the output with `max_completion_tokens` instead, see llmroute.sidecar.probebody.)"""


class ShadowProber:
    """Per-route choice of shadow probes: one per `min_interval` per backend (a slow one in flight holds back the
    next for `PATIENCE_S`); while a backend may be recovering, up to `CONFIRMING` in flight. Probes are only ever
    triggered by real requests, so an idle route costs nothing."""

    __slots__ = ("_in_flight", "_last", "_min_interval", "_refused", "_stale_after")

    def __init__(self, *, stale_after: float = STALE_AFTER_S, min_interval: float = MIN_INTERVAL_S) -> None:
        self._stale_after = stale_after
        self._min_interval = min_interval
        self._last: dict[str, float] = {}
        """When each backend's latest probe was sent."""
        self._refused: dict[str, float] = {}
        """Until when each backend that refused a probe as a bad request is left alone (`REFUSED_S`)."""
        self._in_flight: dict[str, list[tuple[float, bool]]] = {}
        """When the probes sent to each backend and not yet `done` were sent, and whether each was streamed (for
        a stream request), oldest first."""

    def due(self, ranked: Sequence[Candidate], now: float, *, stream: bool = False) -> list[Candidate]:
        """The non-primary candidates of this request (`stream`: a stream, ranked by first tokens) that are stale
        and may be probed now; they are marked in flight. Pass the eligible, ranked list (ejected backends are
        probed by ejection, not here). Feed each probe through the backend's stats as usual, then call `done`."""
        due = []
        for candidate in ranked[1:]:
            # A backend whose latest answer came in under half its estimate, or that answered after failing,
            # may be recovering: it gets up to `CONFIRMING` probes in flight, so the few answers that prove it
            # come within a second. A failure ends that (`PeakEWMA.observe_at_least`): the trial failed, and
            # each failure in a row then doubles the wait for the next (`FAILED_BACKOFF_MAX_S`).
            name, stats = candidate.name, candidate.stats
            if self._refused and now < self._refused.get(name, 0.0):
                continue
            flights = self._in_flight.get(name)
            last = self._last.get(name)
            # For a stream, so may one whose latest first token came in under half its estimate: streams rank it by
            # first tokens, which its probes for streams measure.
            recovering = stats.recovering
            first_tokens = stream and not recovering and stats.ttft.recovering
            if recovering or first_tokens:
                # Probes sent before the request behind its newest answer (first token) are old news: they do not
                # count.
                news = (stats.stream_news_from if first_tokens else stats.news_from) or 0.0
                # Only streamed probes can show a first token: JSON ones do not hold a first-token proof back.
                counted = (sent for sent, streamed in flights or () if streamed or not first_tokens)
                if sum(1 for sent in counted if sent >= news) >= CONFIRMING:
                    continue
            elif self._fresh(stats, last, now, stream=stream) or (
                last is not None and (now - last < self._min_interval or (flights and now - last < PATIENCE_S))
            ):
                continue
            self._last[name] = now
            self._in_flight.setdefault(name, []).append((now, stream))
            due.append(candidate)
        return due

    def _fresh(self, stats: BackendStats, last_probe: float | None, now: float, *, stream: bool) -> bool:
        """Whether what is known of the backend is recent enough: the app's newest request to it or the request
        behind its newest outcome was sent within the quiet time (for a `stream`, its newest stream and first
        token: a backend busy with JSON requests may have no recent first token); once its latest outcomes
        failed, that time is longer and also counts from the latest failure's arrival and the latest probe."""
        failed = stats.failed_in_row
        if failed > BACKOFF_AFTER:
            quiet = self._quiet(failed)
            times: tuple[float | None, ...] = (stats.news_from, stats.last_sent, stats.last_observed, last_probe)
        else:  # every request reads this for each backend it is not sent to: no more than needed
            quiet = self._stale_after
            times = (stats.stream_news_from, stats.stream_sent) if stream else (stats.news_from, stats.last_sent)
        return any(seen is not None and now - seen <= quiet for seen in times)

    def _quiet(self, failed_in_row: int) -> float:
        """Seconds without news after which a backend is probed: longer while its latest outcomes failed."""
        if failed_in_row <= BACKOFF_AFTER:
            return self._stale_after
        backoff = self._stale_after * 2.0 ** min(failed_in_row - BACKOFF_AFTER, 16)
        return min(backoff, max(FAILED_BACKOFF_MAX_S, self._stale_after))

    def refused_for(self, name: str, now: float) -> float | None:
        """Seconds until `name` is probed again after refusing a probe as a bad request; None when it is not."""
        until = self._refused.get(name)
        return until - now if until is not None and until > now else None

    def done(self, name: str, sent: float | None = None, *, refused: bool = False) -> None:
        """The shadow probe to `name` sent at `sent` (the `now` of its `due`; the oldest when not given)
        finished, whatever its outcome (`refused`: the backend refused it as a bad request)."""
        flights = self._in_flight.get(name)
        if flights:
            at, _ = flights.pop(next((i for i, (when, _) in enumerate(flights) if when == sent), 0))
            if refused:
                self._refused[name] = at + REFUSED_S
