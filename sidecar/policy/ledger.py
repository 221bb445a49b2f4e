"""The sidecar's quota ledger: for each quota that applies to it, the grant it may use in the current window,
what finished requests used and what requests in flight reserved.

Admission never waits on the network: a request fits when `used + reserved + estimate <= grant`. The grant
comes from the operator (a share of the limit, on the load stream), or in local mode is the whole limit.
A reservation is a handle settled exactly once, on the real usage, so a request can neither be charged
twice nor forgotten. Windows are tumbling and UTC-aligned: at the turn `used` starts again from zero,
while reservations still in flight stay reserved and settle into the window they end in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from types import TracebackType

from llmroute.model.policy import QuotaKey, Window

RETRY_SOON_S = 1.0
"""Retry-After for a share that ran out while the limit may have room elsewhere: the operator moves shares
within about a second."""


FIT = 1.0 + 1e-9
"""A request fits when used + reserved + estimate <= grant x FIT: the operator grants a sparse sender room for
exactly one more request, and that sum, computed in another order, can come out a few ulps short of it (the
sidecar was then refused on every request while holding room for one). It lets a sidecar past its grant by
at most a billionth of it."""

MAX_SCALE = 10.0
"""The most a quota scales its estimates by (Quota.scale), so one odd answer cannot freeze a sidecar."""

SLOTS = {"usd": 0, "tokens": 1, "requests": 2}
"""Each quantity's position in the (USD, tokens, requests) triples admission and settlement index by
`Quota.slot`: a tuple index instead of comparing the quantity's name per quota per request."""


class ReservationSettled(RuntimeError):
    """A second settlement of one reservation: a bug in the caller, never a runtime condition."""


class Quota:
    """One quota of this sidecar in its current window."""

    __slots__ = (
        "_ledger",
        "demand",
        "enforced",
        "granted",
        "key",
        "limit",
        "quantity",
        "rejected",
        "reserved",
        "scale",
        "slot",
        "smallest_ask",
        "used",
        "window",
        "window_end",
        "window_start",
    )

    def __init__(self, key: QuotaKey, window: Window, limit: float, ledger: QuotaLedger, now: float) -> None:
        self.key = key
        self.quantity = key.quantity
        self.slot = SLOTS[key.quantity]
        self.window = window
        self.limit = limit
        """The policy's whole limit (every sidecar's shares together)."""
        self._ledger = ledger
        self.window_start = window.start(now)
        self.window_end = window.end(now)
        self.granted = 0.0
        """What this sidecar may use in the current window, in all (0 without a grant for it); kept current
        by `regrant` whenever the limit, the window or the grants change, so requests only read it."""
        self.regrant()
        self.used = 0.0
        self.reserved = 0.0
        self.scale = 1.0
        """How much more than their estimate requests have been using lately (at least 1): estimates are
        scaled by it, so a prompt the estimate undercounts does not let a sidecar overrun its grant."""
        self.demand = 0.0
        """Asked for since the last load report, admitted or not."""
        self.rejected = 0
        """Requests refused on this quota since the last load report."""
        self.smallest_ask = 0.0
        """The smallest amount one request asked for since the last load report, admitted or not (0: none)."""
        self.enforced = True
        """False for an Observe budget: the operator grants it nothing (it only counts the fleet's spend), so
        under the operator it admits everything; alone (local mode) it still says when the limit is passed."""

    def __repr__(self) -> str:
        return f"Quota({self.key}, used={self.used:g}, reserved={self.reserved:g}, granted={self.granted:g})"

    def roll(self, now: float) -> None:
        """Move to the window containing `now` if the current one is over: nothing used there yet."""
        if now >= self.window_end:
            self.window_start = self.window.start(now)
            self.window_end = self.window.end(now)
            self.used = 0.0
            self.regrant()

    def regrant(self) -> None:
        """Read the grant in force for the current window again (the limit, alone)."""
        ledger = self._ledger
        self.granted = self.limit if ledger.local else ledger.granted(self.key, self.window_start, self.limit)

    def room(self, now: float) -> float:
        """What a new request may still reserve now."""
        self.roll(now)
        return self.granted - self.used - self.reserved

    def ask(self, amount: float, now: float) -> bool:
        """Whether `amount` fits now; counts it as demand either way, and tells the ledger when it does not
        fit with no grant to blame but this sidecar's share (so the operator hears of the demand at once)."""
        amount *= self.scale
        self.demand += amount
        if amount < self.smallest_ask or not self.smallest_ask:
            self.smallest_ask = amount
        if now >= self.window_end:
            self.roll(now)
        if self.used + self.reserved + amount <= self.granted * FIT or not (self.enforced or self._ledger.local):
            return True
        self._ledger.unmet()
        return False

    def retry_after(self, now: float) -> int:
        """Seconds until a refused request may fit: until the window turns when this sidecar holds the whole
        limit (nothing is left anywhere), else about the time the operator takes to move shares."""
        if self.granted >= self.limit:
            return max(1, math.ceil(self.window_end - now))
        return int(RETRY_SOON_S)

    def settle(self, reserved: float, used: float, now: float) -> None:
        """A request that reserved `reserved` ended having used `used`."""
        if now >= self.window_end:
            self.roll(now)
        left = self.reserved - reserved
        self.reserved = left if left > 0.0 else 0.0
        self.used += used
        if reserved > 0.0:  # learn from the estimate (reserved / scale) what requests really use
            scale = 0.7 * self.scale + 0.3 * (used * self.scale / reserved)
            self.scale = 1.0 if scale < 1.0 else MAX_SCALE if scale > MAX_SCALE else scale


class QuotaLedger:
    """Every quota of this sidecar, and the grants the operator sent (or, `local`, the whole limits)."""

    def __init__(
        self, *, local: bool, clock: Callable[[], float] = time.time, on_unmet: Callable[[], None] | None = None
    ) -> None:
        self.local = local
        self.clock = clock
        self.on_unmet = on_unmet
        """Called when a request finds too small a share (control-plane mode): report the demand early."""
        self.quotas: dict[QuotaKey, Quota] = {}
        self.grants_version = 0
        """The version of the last set of grants applied (0: none yet), echoed in load reports."""
        self._grants: dict[QuotaKey, dict[float, float]] = {}

    def track(self, key: QuotaKey, window: Window, limit: float) -> Quota:
        """The quota for `key`, kept (with its usage) when it already exists with the same window."""
        quota = self.quotas.get(key)
        if quota is None or quota.window != window:
            quota = self.quotas[key] = Quota(key, window, limit, self, self.clock())
        quota.limit = limit
        quota.regrant()
        return quota

    def keep_only(self, keys: Iterable[QuotaKey]) -> None:
        """Forget quotas no policy has any more (requests holding them still settle harmlessly)."""
        wanted = set(keys)
        for key in [k for k in self.quotas if k not in wanted]:
            del self.quotas[key]

    def apply_grants(self, grants: Iterable[tuple[QuotaKey, float, float]], version: int) -> None:
        """A complete set of grants (key, window start, granted): any grant not in it is withdrawn."""
        fresh: dict[QuotaKey, dict[float, float]] = {}
        for key, window_start, granted in grants:
            fresh.setdefault(key, {})[window_start] = granted
        self._grants = fresh
        self.grants_version = version
        for quota in self.quotas.values():
            quota.regrant()

    def granted(self, key: QuotaKey, window_start: float, limit: float) -> float:
        """The grant in force for `key` in the window starting at `window_start`."""
        if self.local:
            return limit
        return self._grants.get(key, {}).get(window_start, 0.0)

    def unmet(self) -> None:
        """A request found too small a share."""
        if self.on_unmet is not None and not self.local:
            self.on_unmet()

    def take_interval(self) -> list[tuple[Quota, float, int, float]]:
        """For a load report: each quota with the demand, refusals and smallest ask since the last one (all start
        again)."""
        now = self.clock()
        taken = []
        for quota in self.quotas.values():
            quota.roll(now)
            taken.append((quota, quota.demand, quota.rejected, quota.smallest_ask))
            quota.demand = 0.0
            quota.rejected = 0
            quota.smallest_ask = 0.0
        return taken


class Reservation:
    """What one admitted request holds on each quota that applies to it, until it settles (exactly once).

    As a context manager, a reservation still open when the block ends is charged what it reserved: the
    request went out and its real usage is unknown (the app went away, the stream broke off), and the
    estimate bounds it. `hand_over` keeps it open past the block for a stream, which then settles it.

    A stream that broke off and was continued on another backend was billed by two providers: `interrupted`
    adds the tokens of the attempt that broke off, so the tokens quotas count every attempt, not the last."""

    __slots__ = ("_claims", "_clock", "_handed_over", "_interrupted", "closed")

    def __init__(self, claims: Iterable[tuple[Quota, float]], clock: Callable[[], float] = time.time) -> None:
        """Reserve each claim's estimate, scaled by what its quota's requests have been really using."""
        self._clock = clock
        self.closed = False
        self._handed_over = False
        self._interrupted = 0
        held = []
        for quota, amount in claims:
            amount *= quota.scale
            quota.reserved += amount
            held.append((quota, amount))
        self._claims = held

    def __repr__(self) -> str:
        state = "settled" if self.closed else "open"
        return f"Reservation({', '.join(q.key.limit for q, _ in self._claims)}, {state})"

    def interrupted(self, tokens: int) -> None:
        """An attempt broke off mid-stream and the request went on on another backend: its provider billed
        about `tokens` (estimated: its usage never came), charged to the tokens quotas at settlement. Its USD
        needs no such note: the answer's cost, which settles the USD quotas, already sums every attempt's."""
        self._interrupted += tokens

    def settle(self, cost_usd: float, tokens: int) -> None:
        """The request ended: charge its real cost (every attempt's), the tokens of its last attempt and of
        those that broke off before it, and one request."""
        self._close()
        now = self._clock()
        measures = (cost_usd, tokens + self._interrupted, 1.0)  # by Quota.slot
        for quota, amount in self._claims:
            quota.settle(amount, measures[quota.slot], now)

    def settle_reserved(self) -> None:
        """The request ended with its real usage unknown: charge what it reserved (and on the tokens quotas,
        the tokens of attempts that broke off before the last, which the estimate did not cover)."""
        self._close()
        now = self._clock()
        for quota, amount in self._claims:
            quota.settle(amount, amount + self._interrupted if quota.slot == SLOTS["tokens"] else amount, now)

    def hand_over(self) -> Reservation:
        """Keep it open past the block it was taken in: a stream now owns it and must settle it."""
        self._handed_over = True
        return self

    def _close(self) -> None:
        if self.closed:
            raise ReservationSettled(f"{self!r} was already settled")
        self.closed = True

    def __enter__(self) -> Reservation:
        self._handed_over = False
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if not self.closed and not self._handed_over:
            self.settle_reserved()
