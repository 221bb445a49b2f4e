"""Quota grants on the load stream (Envoy's rate-limit-quota service): usage comes up, grants go down.

Each load stream's reports feed the allocator; a supervised loop re-allocates every `tick` seconds and
sends a sidecar a LoadDirective (its complete grants, a new grants_version) only when its grants or
its report interval changed. Sidecars of namespaces with quotas report every `policy_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from llmroute.model.policy import Policy, QuotaKey, Window
from llmroute.v1 import load_pb2
from llmroute.v1.quota_keys import key_message, key_of

from .allocator import Allocator, Grant, Limit, Usage

log = logging.getLogger(__name__)

MINUTE = Window(60)


def policy_limits(policy: Policy, replicas: int = 1) -> list[Limit]:
    """The quotas of a policy: budgets (Observe ones counted, never granted) and both sides of rate limits.

    With several operator replicas each grants its own sidecars at most 1/replicas of each limit."""
    out = []
    for budget in policy.budgets:
        key = QuotaKey(policy.namespace, policy.name, budget.name, "usd")
        out.append(Limit(key, budget.limit_usd / replicas, budget.window, enforced=budget.action != "Observe"))
    for rate in policy.rate_limits:
        if rate.requests_per_minute is not None:
            key = QuotaKey(policy.namespace, policy.name, rate.name, "requests")
            out.append(Limit(key, rate.requests_per_minute / replicas, MINUTE))
        if rate.tokens_per_minute is not None:
            key = QuotaKey(policy.namespace, policy.name, rate.name, "tokens")
            out.append(Limit(key, rate.tokens_per_minute / replicas, MINUTE))
    return out


def usages(report: load_pb2.LoadReport) -> list[Usage]:
    """The quota figures of a load report."""
    out = []
    for q in report.quotas:
        key = key_of(q.key)
        if key is not None:
            out.append(Usage(key, q.window_start, q.used, q.reserved, q.demand, q.rejected, q.granted))
    return out


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


@dataclass(slots=True)
class _Stream:
    namespace: str
    send: Callable[[load_pb2.LoadDirective], None]
    last: tuple[object, ...] = ()
    interval: float = 0.0


class QuotaService:
    """Grants for the sidecars connected to this replica, from their load reports and the policies in force."""

    def __init__(
        self,
        *,
        report_interval: float,
        policy_interval: float = 0.5,
        tick: float = 0.1,
        replicas: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.report_interval = report_interval
        self.policy_interval = policy_interval
        self.tick = tick
        self.replicas = max(1, replicas)
        self.allocator = Allocator(horizon=max(2.0, 4 * policy_interval))
        self.clock = clock
        """Unix time; a bench shifts it to a window start."""
        self._policies: dict[str, tuple[Policy, ...]] = {}
        self._streams: dict[str, _Stream] = {}
        self._version = 0
        self._figures: dict[QuotaKey, QuotaFigures] = {}

    def set_policies(self, namespace: str, policies: Sequence[Policy]) -> None:
        """The policies that apply to the namespace's sidecars."""
        if self._policies.get(namespace) == tuple(policies):
            return
        self._policies[namespace] = tuple(policies)
        unique = {(p.namespace, p.name): p for ps in self._policies.values() for p in ps}
        self.allocator.set_limits(limit for p in unique.values() for limit in policy_limits(p, self.replicas))

    def interval(self, namespace: str) -> float:
        """The report interval of the namespace's sidecars: short where quotas apply."""
        limited = any(policy_limits(p) for p in self._policies.get(namespace, ()))  # Observe budgets report too
        return self.policy_interval if limited else self.report_interval

    def opened(self, sidecar: str, namespace: str, send: Callable[[load_pb2.LoadDirective], None]) -> object:
        """A load stream opened: it gets its directives through `send` (the first at once). Returns its handle."""
        stream = self._streams[sidecar] = _Stream(namespace, send, interval=self.interval(namespace))
        send(load_pb2.LoadDirective(report_interval_seconds=stream.interval))
        return stream

    def closed(self, sidecar: str, handle: object) -> None:
        """The load stream closed: the sidecar keeps what it holds and gets nothing more (unless it is back)."""
        if self._streams.get(sidecar) is handle:
            del self._streams[sidecar]
            self.allocator.disconnected(sidecar)

    def report(self, sidecar: str, report: load_pb2.LoadReport) -> None:
        """One load report's quota figures."""
        if report.quotas or sidecar in self.allocator.sidecars:
            self.allocator.report(sidecar, report.interval_seconds, usages(report), report.grants_version, self.clock())

    async def run(self) -> None:
        """Re-allocate and send changed grants every tick, until cancelled."""
        while True:
            self.allocate()
            await asyncio.sleep(self.tick)

    def allocate(self) -> None:
        """One round: grants for every sidecar, directives to those whose grants or interval changed."""
        now = self.clock()
        self._record(now)
        grants = self.allocator.allocate(now) if self.allocator.limits else {}
        for sidecar, stream in self._streams.items():
            given = grants.get(sidecar, [])
            interval = self.interval(stream.namespace)
            fingerprint = tuple((g.key, g.window_start, round(g.granted, 9)) for g in given)
            if fingerprint == stream.last and interval == stream.interval:
                continue
            self._version = max(self._version + 1, time.time_ns() // 1000)
            stream.last, stream.interval = fingerprint, interval
            if sidecar in self.allocator.sidecars:
                self.allocator.sent(sidecar, self._version, given)
            stream.send(self._directive(interval, given))

    def _directive(self, interval: float, grants: Iterable[Grant]) -> load_pb2.LoadDirective:
        return load_pb2.LoadDirective(
            report_interval_seconds=interval,
            grants_version=self._version,
            grants=[
                load_pb2.QuotaGrant(
                    key=key_message(g.key), window_start=g.window_start, window_end=g.window_end, granted=g.granted
                )
                for g in grants
            ],
        )

    def _record(self, now: float) -> None:
        """Sum each quota's current window over the sidecars; keep the last completed window's total."""
        for key, limit in self.allocator.limits.items():
            start = limit.window.start(now)
            used = reserved = 0.0
            rejected = 0
            for sidecar in self.allocator.sidecars.values():
                holding = sidecar.holdings.get((key, int(start)))
                if holding is not None:
                    used += holding.used
                    reserved += holding.reserved
                    rejected += holding.rejected
            before = self._figures.get(key)
            previous = before.previous_used if before is not None else None
            if before is not None and before.window_start != start:
                previous = before.used
            self._figures[key] = QuotaFigures(start, used, reserved, rejected, previous)

    def figures(self, key: QuotaKey) -> QuotaFigures | None:
        """What this replica's sidecars did with the quota in its current window (None: not known yet)."""
        return self._figures.get(key)
