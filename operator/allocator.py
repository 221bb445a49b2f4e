"""Split each LLMPolicy limit into per-sidecar grants that follow recent demand, without over-granting.

Pure bookkeeping, no I/O: the control plane feeds it load reports and asks it for grants.

Safety invariant, for every quota and window: the sum over sidecars of max(grant in force, used +
reserved) stays within the limit. A raised grant is in force at once; a lowered one only once the
sidecar echoes a grants_version at least the one that lowered it, so shares move between sidecars
without a moment of over-granting, and a sidecar cut off from the operator spends at most its grant.

Grants are handed out in chunks: what a sidecar has used and reserved, plus its smoothed demand for
the next `horizon` seconds, and at least its largest recent ask while it asked within HOLD_S (when the
limit cannot cover everyone, a max-min fair share of it). The rest stays in the pool for
whoever asks next, so a sidecar that goes quiet, dies or is partitioned strands at most one chunk,
and an idle sidecar that starts sending is granted on its next report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llmroute.model.policy import QuotaKey, Window

SMOOTHING = 0.5
"""Weight of the newest interval in a sidecar's demand rate (an exponentially weighted mean)."""
AHEAD_S = 2.0
"""Grants for the next window are handed out this long before it begins, so nobody waits at the turn."""
HOLD_S = 30.0
"""A sidecar that asked for a quota within this long keeps room for its largest recent ask (about one request)
even between requests: a sparse sender is not refused on every request while its share makes a round trip."""
MIN_INTERVAL_S = 0.25
"""A report covering less (an early report on unmet demand) is read as covering this long, so a burst seen in
a few milliseconds does not read as a huge rate."""


@dataclass(frozen=True, slots=True)
class Share:
    """One sidecar's position on one quota window, as `split` sees it."""

    floor: float
    """Used plus reserved: a grant is never lowered below it."""
    in_force: float
    """The highest grant the sidecar may be applying now (lowered grants not yet echoed count)."""
    want: float
    """What it should hold for its demand: floor plus its demand over the horizon."""
    unit: float = 0.0
    """About one request: a grant beyond the floor smaller than this admits nothing."""


def _max_min(total: float, asks: Sequence[float], among: Sequence[int]) -> list[float]:
    """`total` shared among the indexes `among`: the smallest asks met in full, the rest capped at one level."""
    out = [0.0] * len(asks)
    remaining = total
    for served, i in enumerate(sorted(among, key=lambda j: asks[j])):
        out[i] = max(0.0, min(asks[i], remaining / (len(among) - served)))
        remaining -= out[i]
    return out


def share_out(total: float, asks: Sequence[float], minimums: Sequence[float]) -> list[float]:
    """`total` shared max-min fairly among `asks`: the smallest asks are met in full, the larger ones
    capped at one level (so a busy sidecar gets most, and a newcomer or a sparse sender is never starved).
    When the level would leave someone below both its ask and its minimum (less than one request is of no
    use), only as many as `total` covers are served, the smallest needs first, and they share the rest."""
    active = [i for i, ask in enumerate(asks) if ask > 0]
    out = _max_min(total, asks, active)
    if all(out[i] >= min(asks[i], minimums[i]) for i in active):
        return out
    needs = {i: min(asks[i], minimums[i]) for i in active}
    kept, room = [], total
    for i in sorted(active, key=needs.__getitem__):
        if needs[i] > room:
            break
        kept.append(i)
        room -= needs[i]
    rest = _max_min(room, [ask - needs.get(i, 0.0) for i, ask in enumerate(asks)], kept)
    served = set(kept)
    return [needs[i] + rest[i] if i in served else 0.0 for i in range(len(asks))]


def split(limit: float, shares: Sequence[Share]) -> list[float]:
    """New grants, one per share, keeping sum(max(in force, floor)) within `limit` once raises count.

    Targets are the wants when the limit covers them, else floor plus a max-min fair share of the rest of
    the limit. A grant above what is in force is raised only within the headroom left by everyone's
    grants in force (shared the same way); a grant below is lowered to its target (it frees headroom
    once echoed). Nobody is given a sliver smaller than its `unit` beyond its floor."""
    floors = [s.floor for s in shares]
    extra = [max(s.want, s.floor) - s.floor for s in shares]
    units = [s.unit for s in shares]
    given = share_out(limit - sum(floors), extra, units)
    targets = [f + g for f, g in zip(floors, given, strict=True)]
    committed = [max(s.in_force, s.floor) for s in shares]
    raises = [max(0.0, t - c) for t, c in zip(targets, committed, strict=True)]
    minimums = [max(0.0, s.unit - (c - s.floor)) for s, c in zip(shares, committed, strict=True)]
    raised = share_out(limit - sum(committed), raises, minimums)
    return [t if t < c else c + r for t, c, r in zip(targets, committed, raised, strict=True)]


@dataclass(slots=True)
class Holding:
    """One sidecar's figures for one quota in one window, and the grants sent to it for that window."""

    used: float = 0.0
    reserved: float = 0.0
    reported_grant: float = 0.0
    rejected: int = 0
    smallest_ask: float = 0.0
    """The smallest ask of the latest report (0: none)."""
    sent: list[tuple[int, float]] = field(default_factory=list)
    """(grants_version, grant) sent and not yet superseded by an echoed version."""

    def in_force(self, echoed: int) -> float:
        """The highest grant the sidecar may apply: the newest sent at or before the echoed version, any sent
        since, or what it reports applying. Grants superseded before the echoed one are forgotten."""
        base = max((i for i, (v, _) in enumerate(self.sent) if v <= echoed), default=0)
        del self.sent[:base]
        return max([g for _, g in self.sent] + [self.reported_grant])

    @property
    def floor(self) -> float:
        return self.used + self.reserved

    @property
    def granted(self) -> float:
        """The grant last sent for this window (0 if none)."""
        return self.sent[-1][1] if self.sent else 0.0


@dataclass(slots=True)
class Sidecar:
    """One sidecar known to the allocator: its demand per quota, holdings per window, the versions it echoed."""

    connected: bool = True
    echoed: int = 0
    rate: dict[QuotaKey, float] = field(default_factory=dict)
    """Smoothed demand per second, per quota."""
    peak: dict[QuotaKey, tuple[float, float]] = field(default_factory=dict)
    """Per quota, the largest demand of one report within HOLD_S, and when demand was last seen."""
    unit: dict[QuotaKey, float] = field(default_factory=dict)
    """Per quota, the smallest demand of one report within HOLD_S: about one request."""
    holdings: dict[tuple[QuotaKey, int], Holding] = field(default_factory=dict)
    """(quota, window start) -> holding."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One quota: its limit per window. A quota not `enforced` (an Observe budget) is counted, never granted."""

    key: QuotaKey
    limit: float
    window: Window
    enforced: bool = True


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant to hand to a sidecar: the total it may have used in [window_start, window_end)."""

    key: QuotaKey
    window_start: int
    window_end: int
    granted: float


@dataclass(frozen=True, slots=True)
class Usage:
    """One QuotaUsage of a load report."""

    key: QuotaKey
    window_start: int
    used: float
    reserved: float
    demand: float
    rejected: int
    granted: float
    smallest_ask: float = 0.0
    """The smallest amount one request asked for in the report's interval (0: none asked)."""


class Allocator:
    """Grants for every sidecar and quota from their reports; `allocate(now)` says who gets what next."""

    def __init__(self, *, horizon: float = 2.0) -> None:
        self.horizon = horizon
        self.sidecars: dict[str, Sidecar] = {}
        self.limits: dict[QuotaKey, Limit] = {}

    def set_limits(self, limits: Iterable[Limit]) -> None:
        """Every quota in force (from the policies); holdings of quotas no longer limited are dropped."""
        self.limits = {limit.key: limit for limit in limits}
        for sidecar in self.sidecars.values():
            sidecar.holdings = {k: h for k, h in sidecar.holdings.items() if k[0] in self.limits}

    def report(self, sidecar_id: str, interval: float, usages: Iterable[Usage], echoed: int, now: float) -> None:
        """Take one load report of a sidecar: figures per quota window, demand, and the version it applies."""
        sidecar = self.sidecars.setdefault(sidecar_id, Sidecar())
        sidecar.connected = True
        sidecar.echoed = max(sidecar.echoed, echoed)
        seen = set()
        for usage in usages:
            if usage.key not in self.limits:
                continue
            seen.add(usage.key)
            holding = sidecar.holdings.setdefault((usage.key, usage.window_start), Holding())
            holding.used, holding.reserved = usage.used, usage.reserved
            holding.reported_grant, holding.rejected = usage.granted, usage.rejected
            holding.smallest_ask = usage.smallest_ask
            rate = usage.demand / max(interval, MIN_INTERVAL_S)
            sidecar.rate[usage.key] = SMOOTHING * rate + (1 - SMOOTHING) * sidecar.rate.get(usage.key, rate)
            if usage.demand > 0:
                peak, seen_at = sidecar.peak.get(usage.key, (0.0, now))
                recent = now - seen_at < HOLD_S
                sidecar.peak[usage.key] = (max(usage.demand, peak if recent else 0.0), now)
                unit = sidecar.unit.get(usage.key, usage.demand)
                sidecar.unit[usage.key] = min(usage.demand, unit) if recent else usage.demand
        for key in set(sidecar.rate) - seen:
            sidecar.rate[key] *= 1 - SMOOTHING

    def disconnected(self, sidecar_id: str) -> None:
        """The sidecar's stream closed: it keeps what it holds (it may be partitioned, not dead), asks nothing."""
        sidecar = self.sidecars.get(sidecar_id)
        if sidecar is not None:
            sidecar.connected = False
            sidecar.rate.clear()
            sidecar.peak.clear()

    def allocate(self, now: float) -> dict[str, list[Grant]]:
        """Every connected sidecar's complete grants now (current window, and the next one when it is near)."""
        out: dict[str, list[Grant]] = {sid: [] for sid, s in self.sidecars.items() if s.connected}
        for limit in self.limits.values():
            if not limit.enforced:
                continue
            starts = [limit.window.start(now)]
            if limit.window.end(now) - now <= AHEAD_S:
                starts.append(limit.window.end(now))
            for start in starts:
                end = limit.window.end(start)
                for sid, grant in self._split(limit, int(start), now):
                    out[sid].append(Grant(limit.key, int(start), int(end), grant))
        self.forget(now)
        return out

    def _wanted(self, sidecar: Sidecar, key: QuotaKey, now: float) -> float:
        """What a sidecar should hold beyond its floor: its demand over the horizon, and at least its largest
        recent ask while it asked within HOLD_S."""
        if not sidecar.connected:
            return 0.0
        peak, seen_at = sidecar.peak.get(key, (0.0, 0.0))
        return max(sidecar.rate.get(key, 0.0) * self.horizon, peak if now - seen_at < HOLD_S else 0.0)

    def _split(self, limit: Limit, start: int, now: float) -> list[tuple[str, float]]:
        ids, shares = [], []
        for sid, sidecar in self.sidecars.items():
            holding = sidecar.holdings.get((limit.key, start))
            wanted = self._wanted(sidecar, limit.key, now)
            if holding is None:
                if wanted <= 0:
                    continue
                holding = sidecar.holdings[(limit.key, start)] = Holding()
            ids.append(sid)
            unit = sidecar.unit.get(limit.key, 0.0)
            shares.append(Share(holding.floor, holding.in_force(sidecar.echoed), holding.floor + wanted, unit))
        grants = split(limit.limit, shares)
        # A disconnected sidecar gets nothing (nothing reaches it): what it holds stays in force.
        return [(sid, grant) for sid, grant in zip(ids, grants, strict=True) if self.sidecars[sid].connected]

    def sent(self, sidecar_id: str, version: int, grants: Iterable[Grant]) -> None:
        """The grants went to the sidecar with this grants_version: they count from now."""
        sidecar = self.sidecars[sidecar_id]
        given = {(g.key, g.window_start): g.granted for g in grants}
        for window_key in given:  # a replica relaying the leader's grants may not have seen the window yet
            sidecar.holdings.setdefault(window_key, Holding())
        for window_key, holding in sidecar.holdings.items():
            holding.sent.append((version, given.get(window_key, 0.0)))

    def forget(self, now: float) -> None:
        """Drop windows that have ended, and disconnected sidecars that hold nothing any more."""
        for sid in list(self.sidecars):
            sidecar = self.sidecars[sid]
            sidecar.holdings = {
                (key, start): h
                for (key, start), h in sidecar.holdings.items()
                if key in self.limits and self.limits[key].window.end(start) > now
            }
            if not sidecar.connected and not sidecar.holdings:
                del self.sidecars[sid]
