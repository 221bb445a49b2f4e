"""Quota grants on the load stream (Envoy's rate-limit-quota service): usage comes up, grants go down.

Each load stream's reports feed the allocator; a supervised loop re-allocates every `tick` seconds and
sends a sidecar a LoadDirective (its complete grants, a new grants_version) only when its grants or
its report interval changed. Sidecars of namespaces with quotas report every `policy_interval`.

With several operator replicas only the one `granting` (the leader, once it has heard every replica)
allocates, for the whole fleet: the others keep their sidecars' reports for the leader (`export`),
and push the grants the leader hands them (`apply`); the leader feeds the reports it collects into its
allocator (`imported`) and hands out the remote sidecars' grants (`handover`). A replica that is not
granting never grants on its own: its sidecars keep what they hold.

While other replicas are there (`announcing`), the leader holds back a raise for its own sidecars until
a poll has carried it to them in its ledger (`announced`), as the remote sidecars' grants travel in the
same POST as the ledger: a replica that takes over after the leader dies so knows every grant in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, get_args

from llmroute.model.policy import Policy, Quantity, QuotaKey, Window
from llmroute.v1 import load_pb2
from llmroute.v1.quota_keys import key_message, key_of

from .allocator import Allocator, Grant, Holding, Limit, Sidecar, Usage

log = logging.getLogger(__name__)

MINUTE = Window(60)
QUANTITIES = get_args(Quantity)


REPORTS_KEPT = 16
"""Reports per sidecar a replica keeps for the leader between polls (the oldest go first)."""


def policy_limits(policy: Policy) -> list[Limit]:
    """The quotas of a policy: budgets (Observe ones counted, never granted) and both sides of rate limits."""
    out = []
    for budget in policy.budgets:
        key = QuotaKey(policy.namespace, policy.name, budget.name, "usd")
        out.append(Limit(key, budget.limit_usd, budget.window, enforced=budget.action != "Observe"))
    for rate in policy.rate_limits:
        if rate.requests_per_minute is not None:
            key = QuotaKey(policy.namespace, policy.name, rate.name, "requests")
            out.append(Limit(key, rate.requests_per_minute, MINUTE))
        if rate.tokens_per_minute is not None:
            key = QuotaKey(policy.namespace, policy.name, rate.name, "tokens")
            out.append(Limit(key, rate.tokens_per_minute, MINUTE))
    return out


def usages(report: load_pb2.LoadReport) -> list[Usage]:
    """The quota figures of a load report."""
    out = []
    for q in report.quotas:
        key = key_of(q.key)
        if key is not None:
            out.append(Usage(key, q.window_start, q.used, q.reserved, q.demand, q.rejected, q.granted, q.smallest_ask))
    return out


def _key_json(key: QuotaKey) -> list[str]:
    return [key.namespace, key.policy, key.limit, key.quantity]


def _key(raw: Sequence[Any]) -> QuotaKey:
    namespace, policy, limit, quantity = (str(v) for v in raw)
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}")
    return QuotaKey(namespace, policy, limit, cast("Quantity", quantity))


def _usage_json(usage: Usage, granted: float) -> list[Any]:
    u = usage
    return [_key_json(u.key), u.window_start, u.used, u.reserved, u.demand, u.rejected, granted]


def _usage(raw: Sequence[Any]) -> Usage:
    key, start, used, reserved, demand, rejected, granted = raw
    return Usage(_key(key), int(start), float(used), float(reserved), float(demand), int(rejected), float(granted))


def grants_json(version: int, grants: Iterable[Grant]) -> list[Any]:
    """A sidecar's grants as the leader hands them to a replica: [version, [[key, start, end, granted], ...]]."""
    return [version, [[_key_json(g.key), g.window_start, g.window_end, g.granted] for g in grants]]


def grants_of(raw: Sequence[Any]) -> tuple[int, list[Grant]]:
    """The inverse of `grants_json`."""
    version, grants = raw
    return int(version), [Grant(_key(k), int(start), int(end), float(granted)) for k, start, end, granted in grants]


@dataclass(frozen=True, slots=True)
class QuotaFigures:
    """One quota's window so far over this replica's sidecars (and those that left while holding some)."""

    window_start: float
    used: float
    reserved: float
    rejected: int
    """Requests refused in the sidecars' latest report intervals."""
    previous_used: float | None
    """The last completed window's total, once one completed while this operator ran."""
    smallest_ask: float = 0.0
    """The smallest amount one request asked for in this window (0 while none asked): what is left below it
    pays for no request. Replicas exchange it apart from SHARED_FIGURES (`/fleet`'s `smallestAsks`), which a
    replica of the previous release reads strictly."""
    largest_piece: float | None = None
    """The largest part of what is left that one request could use now: one sidecar's room (its grant beyond what
    it used and reserved) or the rest of the limit no sidecar holds. A remainder split into pieces each smaller
    than a request pays for none. Known where the fleet's grants are (the replica granting); None elsewhere."""

    def shared(self) -> dict[str, Any]:
        """What another replica reads of it from `/fleet` (SHARED_FIGURES)."""
        return {name: getattr(self, name) for name in SHARED_FIGURES}

    @classmethod
    def from_shared(cls, raw: dict[str, Any]) -> QuotaFigures:
        """Another replica's `shared()`; fields a later release may add are left out."""
        return cls(**{name: raw[name] for name in SHARED_FIGURES})


SHARED_FIGURES = ("window_start", "used", "reserved", "rejected", "previous_used")
"""The QuotaFigures fields replicas exchange: those every replica of this release and the previous one reads."""


@dataclass(slots=True)
class _Stream:
    namespace: str
    send: Callable[[load_pb2.LoadDirective], None]
    last: tuple[object, ...] = ()
    interval: float = 0.0
    version: int = 0
    """The grants_version last sent on the stream."""
    pushed: dict[tuple[QuotaKey, int], float] = field(default_factory=dict)
    """The grants last sent on the stream, by (quota, window start)."""
    held: list[tuple[int, list[Grant]]] = field(default_factory=list)
    """Raises decided but not sent until the other replicas have heard of them: (grants_version, grants)."""


Relayed = list[tuple[float, int, list[Usage]]]
"""A sidecar's reports since the leader last collected them: (interval, echoed grants_version, usages)."""


class QuotaService:
    """Grants for the sidecars connected to this replica (and, while it grants for the fleet, to the others),
    from their load reports and the policies in force."""

    def __init__(
        self,
        *,
        report_interval: float,
        policy_interval: float = 0.5,
        tick: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.report_interval = report_interval
        self.policy_interval = policy_interval
        self.tick = tick
        self.allocator = Allocator(horizon=max(2.0, 4 * policy_interval))
        self.clock = clock
        """Unix time; a bench shifts it to a window start."""
        self.granting: Callable[[], bool] = lambda: True
        """Whether this replica allocates for the fleet now (the operator: the leader, once it heard everyone)."""
        self.announcing: Callable[[], bool] = lambda: False
        """Whether other replicas must hear of a raise for this replica's sidecars before it is sent (the leader,
        while another replica answers its polls)."""
        self.on_held: Callable[[], None] = lambda: None
        """Called when a raise is held back: the fleet view announces it at its next poll."""
        self._policies: dict[str, tuple[Policy, ...]] = {}
        self._streams: dict[str, _Stream] = {}
        self._version = 0
        self._figures: dict[QuotaKey, QuotaFigures] = {}
        self._relayed: dict[str, Relayed] = {}  # local sidecar -> reports the leader has not collected yet
        self._gone: set[str] = set()  # local sidecars whose stream closed since the leader last collected
        self._remote: dict[str, str] = {}  # sidecar of another replica -> that replica (while granting)
        self._handover: dict[str, tuple[tuple[object, ...], list[Any]]] = {}  # remote sidecar -> fingerprint, grants
        self._set_aside: set[str] = set()  # allocator entries standing for replicas of the previous release

    def set_policies(self, namespace: str, policies: Sequence[Policy]) -> None:
        """The policies that apply to the namespace's sidecars."""
        if self._policies.get(namespace) == tuple(policies):
            return
        self._policies[namespace] = tuple(policies)
        unique = {(p.namespace, p.name): p for ps in self._policies.values() for p in ps}
        self.allocator.set_limits(limit for p in unique.values() for limit in policy_limits(p))

    def interval(self, namespace: str) -> float:
        """The report interval of the namespace's sidecars: short where quotas apply."""
        limited = any(policy_limits(p) for p in self._policies.get(namespace, ()))  # Observe budgets report too
        return self.policy_interval if limited else self.report_interval

    def opened(self, sidecar: str, namespace: str, send: Callable[[load_pb2.LoadDirective], None]) -> object:
        """A load stream opened: it gets its directives through `send` (the first at once). Returns its handle."""
        stream = self._streams[sidecar] = _Stream(namespace, send, interval=self.interval(namespace))
        self._remote.pop(sidecar, None)
        self._handover.pop(sidecar, None)
        self._gone.discard(sidecar)
        send(load_pb2.LoadDirective(report_interval_seconds=stream.interval))
        return stream

    def closed(self, sidecar: str, handle: object) -> None:
        """The load stream closed: the sidecar keeps what it holds and gets nothing more (unless it is back)."""
        if self._streams.get(sidecar) is handle:
            del self._streams[sidecar]
            self.allocator.disconnected(sidecar)
            self._relayed.pop(sidecar, None)
            self._gone.add(sidecar)

    def report(self, sidecar: str, report: load_pb2.LoadReport) -> None:
        """One load report's quota figures."""
        if report.quotas or sidecar in self.allocator.sidecars:
            found = usages(report)
            self._version = max(self._version, report.grants_version)
            self.allocator.report(sidecar, report.interval_seconds, found, report.grants_version, self.clock())
            kept = self._relayed.setdefault(sidecar, [])
            kept.append((report.interval_seconds, report.grants_version, found))
            del kept[:-REPORTS_KEPT]

    async def run(self) -> None:
        """Re-allocate and send changed grants every tick, until cancelled."""
        while True:
            self.allocate()
            await asyncio.sleep(self.tick)

    def allocate(self) -> None:
        """One round: grants for every sidecar, directives to those whose grants or interval changed. A replica
        not granting only tells its sidecars a changed report interval (a directive with no grants_version)."""
        now = self.clock()
        granting = self.granting()
        self._record(now, granting)
        if not granting:
            self.allocator.forget(now)
            for stream in self._streams.values():
                if stream.held:
                    _drop_held(stream)
                interval = self.interval(stream.namespace)
                if interval != stream.interval:
                    stream.interval = interval
                    stream.send(load_pb2.LoadDirective(report_interval_seconds=interval))
            return
        self._relayed.clear()  # this replica's reports reached its own allocator
        self._gone.clear()
        grants = self.allocator.allocate(now) if self.allocator.limits else {}
        for sidecar, stream in self._streams.items():
            given = grants.get(sidecar, [])
            interval = self.interval(stream.namespace)
            fingerprint = _fingerprint(given)
            if fingerprint == stream.last and interval == stream.interval:
                continue
            stream.last, stream.interval = fingerprint, interval
            version = self._next_version()
            if self.announcing() and _raises(stream.pushed, given):
                self.allocator.sent(sidecar, version, given)  # it counts from now, and is in the next ledger
                stream.held.append((version, given))
                self.on_held()
            else:
                stream.held.clear()  # superseded: a lowered grant goes out at once
                self._push(sidecar, stream, version, given)
        self._hand_over(grants)

    def _hand_over(self, grants: dict[str, list[Grant]]) -> None:
        """Keep the other replicas' sidecars' changed grants for the next poll (they count from now)."""
        for sidecar in self._remote:
            if sidecar not in grants:  # disconnected: nothing reaches it
                self._handover.pop(sidecar, None)
                continue
            fingerprint = _fingerprint(grants[sidecar])
            if self._handover.get(sidecar, ((), None))[0] == fingerprint:
                continue
            version = self._next_version()
            self.allocator.sent(sidecar, version, grants[sidecar])
            self._handover[sidecar] = (fingerprint, grants_json(version, grants[sidecar]))

    def _next_version(self) -> int:
        self._version = max(self._version + 1, time.time_ns() // 1000)
        return self._version

    def _push(self, sidecar: str, stream: _Stream, version: int, grants: list[Grant]) -> None:
        if sidecar in self.allocator.sidecars:
            self.allocator.sent(sidecar, version, grants)
        self._send(stream, version, grants)

    def _send(self, stream: _Stream, version: int, grants: list[Grant]) -> None:
        stream.version = version
        stream.pushed = {(g.key, g.window_start): g.granted for g in grants}
        stream.send(self._directive(stream.interval, version, grants))

    def announced(self, version: int) -> None:
        """The other replicas were handed a ledger taken when `version` was the newest grants_version: send each
        own sidecar the newest raise held back up to it (none once this replica no longer grants)."""
        for stream in self._streams.values():
            ready = [held for held in stream.held if held[0] <= version]
            if not ready:
                continue
            stream.held = [held for held in stream.held if held[0] > version]
            if self.granting():
                self._send(stream, *ready[-1])
            else:
                _drop_held(stream)

    # -- across replicas -----------------------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """This replica's sidecars' reports since the last export, for the leader (and forgets them). Each
        report's `granted` is what this replica knows the sidecar may apply (grants it pushed and the sidecar
        has not echoed yet count), so a new leader learns every grant in force."""
        sidecars: dict[str, Any] = {}
        for sidecar, relayed in self._relayed.items():
            known = self.allocator.sidecars.get(sidecar)
            if known is None:
                continue
            in_force = {k: h.in_force(known.echoed) for k, h in known.holdings.items()}
            sidecars[sidecar] = [
                [
                    interval,
                    echoed,
                    [_usage_json(u, in_force.get((u.key, u.window_start), u.granted)) for u in found],
                ]
                for interval, echoed, found in relayed
            ]
        out = {"sidecars": sidecars, "gone": sorted(self._gone)}
        self._relayed.clear()
        self._gone.clear()
        return out

    def imported(self, replica: str, share: dict[str, Any]) -> None:
        """A replica's `export`, on the leader: its sidecars' reports go into the allocator."""
        now = self.clock()
        for sidecar, reports in share["sidecars"].items():
            if sidecar in self._streams:
                continue  # it has moved to this replica since
            self._remote[sidecar] = replica
            for interval, echoed, found in reports:
                use = [
                    Usage(_key(k), int(ws), float(u), float(r), float(d), int(rj), float(g))
                    for k, ws, u, r, d, rj, g in found
                ]
                self._version = max(self._version, int(echoed))
                self.allocator.report(sidecar, float(interval), use, int(echoed), now)
        for sidecar in share["gone"]:
            if self._remote.get(sidecar) == replica:
                self.allocator.disconnected(sidecar)

    def silent(self, replica: str) -> None:
        """A replica did not answer the leader: its sidecars keep what they hold and are granted nothing more."""
        for sidecar, where in self._remote.items():
            if where == replica:
                self.allocator.disconnected(sidecar)

    def handover(self) -> dict[str, Any]:
        """The grants of every other replica's sidecars, by sidecar: [grants_version, grants] (`grants_json`)."""
        return {sidecar: grants for sidecar, (_, grants) in self._handover.items() if sidecar in self._remote}

    def apply(self, handed: dict[str, Any]) -> None:
        """Push the leader's grants to the sidecars connected here (a version already sent is not sent again)."""
        for sidecar, raw in handed.items():
            stream = self._streams.get(sidecar)
            if stream is None:
                continue
            version, grants = grants_of(raw)
            if version > stream.version:
                self._push(sidecar, stream, version, grants)

    @property
    def newest_version(self) -> int:
        """The newest grants_version decided: a ledger taken now covers every grant held back up to it."""
        return self._version

    def ledger(self) -> dict[str, list[Any]]:
        """What every sidecar this replica knows may hold, by sidecar: [[key, window_start, held], ...] (held: the
        grant it may apply, or more if it used and reserved more; raises held back included). The leader hands it
        to every replica."""
        out: dict[str, list[Any]] = {}
        for sid, sidecar in self.allocator.sidecars.items():
            if sid in self._set_aside:
                continue
            held = [
                [_key_json(key), start, max(h.in_force(sidecar.echoed), h.floor)]
                for (key, start), h in sidecar.holdings.items()
            ]
            if held:
                out[sid] = held
        return out

    def inherit(self, ledger: dict[str, list[Any]]) -> None:
        """The last leader's ledger, on taking over: a sidecar not connected to this replica counts what it held
        there (it may still spend it) until it reports again or the window ends; it is granted nothing meanwhile."""
        log.info("taking over the last leader's ledger: %d sidecars", len(ledger))
        for sid, held in ledger.items():
            sidecar = self.allocator.sidecars.get(sid)
            if sidecar is not None and sidecar.connected:
                continue  # it reports to this replica: its own figures are newer
            sidecar = self.allocator.sidecars.setdefault(sid, Sidecar(connected=False))
            for key, start, amount in held:
                quota = _key(key)
                if quota in self.allocator.limits:
                    holding = sidecar.holdings.setdefault((quota, int(start)), Holding())
                    holding.reported_grant = max(holding.reported_grant, float(amount))

    def set_aside(self, replicas: Collection[str], share: float) -> None:
        """Replicas of the previous release, which grant their own sidecars `share` of every limit themselves: each
        is counted as holding that much of every enforced limit's current and next window, and granted nothing."""
        now = self.clock()
        standing = {f"previous-release replica {replica}" for replica in replicas}
        for gone in self._set_aside - standing:
            self.allocator.sidecars.pop(gone, None)
        self._set_aside = standing
        for sid in standing:
            entry = self.allocator.sidecars.setdefault(sid, Sidecar(connected=False))
            for limit in self.allocator.limits.values():
                for start in (limit.window.start(now), limit.window.end(now)):
                    holding = entry.holdings.setdefault((limit.key, int(start)), Holding())
                    holding.reported_grant = limit.limit * share if limit.enforced else 0.0

    def relinquish(self) -> None:
        """This replica stopped granting for the fleet: forget the other replicas' sidecars (and those set aside)."""
        for sidecar in self._remote.keys() | self._set_aside:
            self.allocator.sidecars.pop(sidecar, None)
        self._remote.clear()
        self._handover.clear()
        self._set_aside.clear()

    # ------------------------------------------------------------------------------------------------

    def _directive(self, interval: float, version: int, grants: Iterable[Grant]) -> load_pb2.LoadDirective:
        return load_pb2.LoadDirective(
            report_interval_seconds=interval,
            grants_version=version,
            grants=[
                load_pb2.QuotaGrant(
                    key=key_message(g.key), window_start=g.window_start, window_end=g.window_end, granted=g.granted
                )
                for g in grants
            ],
        )

    def _record(self, now: float, granting: bool) -> None:
        """Sum each quota's current window over this replica's sidecars; keep the last completed window's total.
        Granting, this replica also knows every sidecar's grant: the largest piece of what is left."""
        for key, limit in self.allocator.limits.items():
            start = limit.window.start(now)
            piece = self._largest_piece(limit, int(start)) if granting else None
            used = reserved = 0.0
            rejected = 0
            smallest = 0.0
            for sid, sidecar in self.allocator.sidecars.items():
                holding = sidecar.holdings.get((key, int(start)))
                if holding is None:
                    continue
                if holding.smallest_ask > 0:  # this replica's own sidecars (others' come with their replica's share)
                    smallest = min(smallest, holding.smallest_ask) if smallest else holding.smallest_ask
                if sid not in self._remote:
                    used += holding.used
                    reserved += holding.reserved
                    rejected += holding.rejected
            before = self._figures.get(key)
            previous = before.previous_used if before is not None else None
            if before is not None and before.window_start != start:
                previous = before.used
            elif before is not None and before.smallest_ask:  # the window's smallest ask so far
                smallest = min(smallest, before.smallest_ask) if smallest else before.smallest_ask
            self._figures[key] = QuotaFigures(start, used, reserved, rejected, previous, smallest, piece)

    def _largest_piece(self, limit: Limit, start: int) -> float:
        """The largest room one sidecar holds in the window, or the rest of the limit nobody holds if larger. A
        previous-release replica's static share is held, but is no one sidecar's room: how it splits is unknown."""
        held = largest = 0.0
        for sid, sidecar in self.allocator.sidecars.items():
            holding = sidecar.holdings.get((limit.key, start))
            if holding is not None:
                in_force = holding.in_force(sidecar.echoed)
                held += max(in_force, holding.floor)
                if sid not in self._set_aside:
                    largest = max(largest, in_force - holding.floor)
        return max(largest, limit.limit - held)

    def figures(self, key: QuotaKey) -> QuotaFigures | None:
        """What this replica's sidecars did with the quota in its current window (None: not known yet)."""
        return self._figures.get(key)


def _drop_held(stream: _Stream) -> None:
    """Forget the raises held back for a sidecar (this replica no longer grants): decided afresh if it grants again."""
    stream.held, stream.last = [], ()


def _raises(pushed: dict[tuple[QuotaKey, int], float], grants: Iterable[Grant]) -> bool:
    """Whether `grants` give the sidecar more of some quota window than the grants it was last sent."""
    return any(g.granted > pushed.get((g.key, g.window_start), 0.0) for g in grants)


def _fingerprint(grants: Iterable[Grant]) -> tuple[object, ...]:
    return tuple((g.key, g.window_start, round(g.granted, 9)) for g in grants)
