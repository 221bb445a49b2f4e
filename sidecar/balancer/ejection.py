"""Outlier ejection per route, with Envoy's semantics: consecutive failures eject a backend with a growing
back-off, never more than maxEjectionPercent of the route at once; a 429 with Retry-After ejects for that
long. An ejected backend returns only after a cheap probe (GET {url}/models) succeeds, and then half-open:
one real request at a time (a trial) until one succeeds, since a model list that answers says nothing of
the completions endpoint. A failed trial ejects it again at once, with a longer back-off."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from .outcome import FailureKind

MAX_EJECTION_S = 300.0
"""Cap of one ejection (Envoy's max_ejection_time default), also applied to Retry-After."""
DEFAULT_RETRY_AFTER_S = 1.0
"""Ejection for a 429 without a usable Retry-After."""
PROBE_TIMEOUT_S = 10.0
"""A probe not reported back within this is considered lost and is handed out again."""


class State(StrEnum):
    """Where a backend is in the ejection cycle: active -> ejected -> probing -> half-open -> active (or
    ejected again from probing or half-open)."""

    ACTIVE = "active"
    EJECTED = "ejected"
    PROBING = "probing"
    HALF_OPEN = "half-open"


class Reason(StrEnum):
    """Why the backend was last ejected."""

    FAILURES = "consecutive-failures"
    RATE_LIMITED = "rate-limited"
    PROBE_FAILED = "probe-failed"
    TRIAL_FAILED = "trial-failed"


@dataclass(slots=True)
class _Host:
    state: State = State.ACTIVE
    reason: Reason | None = None
    consecutive: int = 0
    multiplier: int = 0  # Envoy's ejection multiplier: grows per ejection, decays while healthy
    until: float = 0.0  # end of the current ejection
    since: float = 0.0  # when the current state began
    ejections: int = 0  # lifetime count, for metrics
    trial: bool = False  # half-open: the one real request it may have is out


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One backend's ejection state for /debug/backends and metrics."""

    name: str
    state: State
    reason: Reason | None
    consecutive_failures: int
    ejections: int
    remaining_s: float
    """Seconds of ejection left (0 when active, probing or due for a probe)."""


class OutlierDetector:
    """Ejection state of one route's backends. Back-off is exponential (the design's choice, where Envoy is
    linear): base * 2^(n-1) for the n-th ejection, capped at `max_ejection`; n decays by one per
    `base_ejection` seconds spent healthy."""

    __slots__ = ("_base", "_hosts", "_max", "_max_percent", "_threshold", "half_open")

    def __init__(
        self,
        names: Iterable[str],
        *,
        consecutive_failures: int = 5,
        base_ejection: float = 30.0,
        max_ejection_percent: float = 50.0,
        max_ejection: float = MAX_EJECTION_S,
    ) -> None:
        self._threshold = consecutive_failures
        self._base = base_ejection
        self._max_percent = max_ejection_percent
        self._max = max_ejection
        self._hosts: dict[str, _Host] = {}
        self.half_open: set[str] = set()
        """Backends waiting for a trial request: a set to test on every attempt without a call."""
        self.set_backends(names)

    def set_backends(self, names: Iterable[str]) -> None:
        """The route's backends after a reload: state is kept for names that remain."""
        old = self._hosts
        self._hosts = {name: old.get(name) or _Host() for name in names}
        self.half_open &= set(self._hosts)

    def is_available(self, name: str) -> bool:
        """Whether the backend may get traffic (unknown names may: ejection only ever removes); a half-open
        one only while its trial request is not out."""
        host = self._hosts.get(name)
        return host is None or host.state is State.ACTIVE or (host.state is State.HALF_OPEN and not host.trial)

    def trial_started(self, name: str) -> bool:
        """An attempt on the backend starts; True when it is the half-open backend's trial."""
        host = self._hosts.get(name)
        if host is None or host.state is not State.HALF_OPEN or host.trial:
            return False
        host.trial = True
        return True

    def trial_abandoned(self, name: str) -> None:
        """The trial ended without a verdict (it lost a race, the app went away): another request may try."""
        host = self._hosts.get(name)
        if host is not None and host.state is State.HALF_OPEN:
            host.trial = False

    def record_success(self, name: str) -> None:
        """A successful answer resets the consecutive-failure count and closes a half-open circuit."""
        host = self._hosts.get(name)
        if host is not None:
            host.consecutive = 0
            if host.state is State.HALF_OPEN:
                host.state = State.ACTIVE
                host.reason = None
                host.trial = False
                self.half_open.discard(name)

    def record_failure(self, name: str, kind: FailureKind, now: float) -> bool:
        """A failed attempt; returns True when it ejected the backend. Only `kind.ejects` kinds count
        (5xx, connect failure, reset, timeout, auth); a request error neither counts nor resets."""
        host = self._hosts.get(name)
        if host is not None and host.state is State.HALF_OPEN:
            if not kind.ejects:  # the request's fault, not the backend's: the trial says nothing
                host.trial = False
                return False
            self._eject(host, now, self._backoff(host, now), Reason.TRIAL_FAILED)
            return True
        if host is None or not kind.ejects or host.state is not State.ACTIVE:
            return False
        host.consecutive += 1
        if host.consecutive < self._threshold or not self._room_to_eject():
            return False
        self._eject(host, now, self._backoff(host, now), Reason.FAILURES)
        return True

    def record_rate_limited(self, name: str, retry_after: float | None, now: float) -> bool:
        """A 429: eject for Retry-After seconds (capped; `DEFAULT_RETRY_AFTER_S` if absent), whatever the
        failure count and the max-ejection percent, since the provider asked us to stay away. Returns
        True when it ejected the backend or lengthened its ejection."""
        host = self._hosts.get(name)
        if host is None:
            return False
        wait = DEFAULT_RETRY_AFTER_S if retry_after is None or retry_after <= 0 else retry_after
        until = now + min(wait, self._max)
        if host.state is not State.ACTIVE and host.until >= until:
            return False
        self._eject(host, now, until - now, Reason.RATE_LIMITED)
        return True

    def due_for_probe(self, now: float) -> list[str]:
        """Backends whose ejection is over (or whose probe was lost): each is returned once and is then
        'probing' until `probe_result`. Call it every few hundred ms, or on each request."""
        due = []
        for name, host in self._hosts.items():
            if (host.state is State.EJECTED and host.until <= now) or (
                host.state is State.PROBING and now - host.since >= PROBE_TIMEOUT_S
            ):
                host.state = State.PROBING
                host.since = now
                due.append(name)
        return due

    def probe_result(self, name: str, ok: bool, now: float) -> None:
        """Outcome of GET {url}/models: ok makes the backend half-open (one trial request at a time until
        one succeeds); failure keeps it out for the base ejection time, then it is probed again. The probe is
        free, so a failed one does not lengthen the next wait, as an Envoy health check that keeps failing is
        repeated at a fixed interval: with waits doubled per failed probe (up to 300 s), a backend down for two
        minutes came back 90 s after it recovered. The back-off grows with ejections by real traffic (failures
        in a row, a failed trial) alone."""
        host = self._hosts.get(name)
        if host is None or host.state is not State.PROBING:
            return
        if ok:
            host.state = State.HALF_OPEN
            self.half_open.add(name)
            host.trial = False
            host.consecutive = 0
            host.since = now
        else:
            self._eject(host, now, min(self._base, self._max), Reason.PROBE_FAILED)

    def retry_after(self, names: Iterable[str], now: float) -> float | None:
        """If every named backend is out because of a 429, seconds until the first may return (the
        Retry-After of the sidecar's own 429); otherwise None."""
        soonest: float | None = None
        for name in names:
            host = self._hosts.get(name)
            if host is None or host.state is State.ACTIVE or host.reason is not Reason.RATE_LIMITED:
                return None
            wait = max(host.until - now, 0.0)
            soonest = wait if soonest is None else min(soonest, wait)
        return soonest

    def snapshot(self, now: float) -> list[HostStatus]:
        """Every backend's state, in route order."""
        return [
            HostStatus(
                name=name,
                state=host.state,
                reason=host.reason,
                consecutive_failures=host.consecutive,
                ejections=host.ejections,
                remaining_s=max(host.until - now, 0.0) if host.state is State.EJECTED else 0.0,
            )
            for name, host in self._hosts.items()
        ]

    def _room_to_eject(self) -> bool:
        """Envoy's max_ejection_percent, but a route of two or more may always lose one backend and a
        route of one never does (there is nothing to fail over to; ejecting would only turn errors into
        a total outage). Rate-limit ejections count toward the limit but are not bound by it."""
        total = len(self._hosts)
        limit = max(int(total * self._max_percent / 100.0), 1 if total > 1 else 0)
        out = sum(host.state is not State.ACTIVE for host in self._hosts.values())
        return out < limit

    def _backoff(self, host: _Host, now: float) -> float:
        """Next ejection's length; bumps the multiplier after decaying it for the time spent healthy."""
        if host.state is State.ACTIVE and host.multiplier:
            host.multiplier = max(host.multiplier - int((now - host.since) // self._base), 0)
        host.multiplier += 1
        return min(self._base * 2.0 ** min(host.multiplier - 1, 30), self._max)

    def _eject(self, host: _Host, now: float, duration: float, reason: Reason) -> None:
        if host.state is State.HALF_OPEN:  # a failed trial (or a 429 on it): no longer waiting for one
            self.half_open.difference_update(n for n, h in self._hosts.items() if h is host)
        if host.state is State.ACTIVE:
            host.ejections += 1
        host.state = State.EJECTED
        host.trial = False
        host.reason = reason
        host.until = now + duration
        host.since = now
        host.consecutive = 0
