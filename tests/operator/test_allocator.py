"""The quota allocator: shares follow demand, move without over-granting, and survive joins, leaves and turns.

A fleet of simulated sidecars plays the sidecar's side of the protocol with the sidecar's own code: each
holds the real quota ledger (llmroute.sidecar.policy), applies the grants of a directive, admits its
requests only where the ledger says they fit, settles them, and reports through the real wire format
(usage_report into a LoadReport, read back by the operator's `usages`). After every step the test
checks the invariant the operator promises: the sidecars' grants in force and usage never add up to
more than the limit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from llmroute.model.policy import QuotaKey, Window
from llmroute.operator.allocator import AHEAD_S, HOLD_S, Allocator, Grant, Limit, Share, Usage, split
from llmroute.operator.quotas import usages
from llmroute.sidecar.policy.ledger import Quota, QuotaLedger, Reservation
from llmroute.sidecar.policy.wire import usage_report
from llmroute.v1 import load_pb2

KEY = QuotaKey("shop", "limits", "hourly", "usd")
STEP = 0.5  # report interval


class Clock:
    """The fleet's wall-clock time, which the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class SimSidecar:
    """One sidecar: the real quota ledger, and requests of `unit` at `rate` units per second."""

    name: str
    rate: float  # units asked for per second
    clock: Clock
    limit: float
    window: Window
    settles: Callable[[float], float] = lambda reserved: reserved
    """What a request that reserved this much really uses."""
    ledger: QuotaLedger = field(init=False)
    quota: Quota = field(init=False)
    grants: dict[int, float] = field(default_factory=dict)  # window start -> grant applied
    used: dict[int, float] = field(default_factory=dict)  # window start -> what the ledger counted there
    owed: float = 0.0  # asked for, not yet a whole request
    history: list[tuple[int, dict[int, float]]] = field(default_factory=list)  # every grant set it applied

    def __post_init__(self) -> None:
        self.ledger = QuotaLedger(local=False, clock=self.clock)
        self.quota = self.ledger.track(KEY, self.window, self.limit)

    def apply(self, version: int, grants: list[Grant]) -> None:
        self.ledger.apply_grants([(g.key, g.window_start, g.granted) for g in grants], version)
        self.grants = {g.window_start: g.granted for g in grants if g.key == KEY}
        self.history.append((version, dict(self.grants)))

    def work(self, seconds: float, unit: float = 1.0) -> None:
        """Ask for `rate * seconds` in requests of `unit`, each admitted only if the ledger finds it fits."""
        now = self.clock()
        self.quota.roll(now)
        self.owed += self.rate * seconds
        while self.owed >= unit - 1e-9:
            self.owed -= unit
            if self.quota.ask(unit, now):
                Reservation(((self.quota, unit),), self.clock).settle(self.settles(unit), tokens=0)
            else:
                self.quota.rejected += 1
        self.used[int(self.quota.window_start)] = self.quota.used

    def report(self) -> tuple[list[Usage], int]:
        """This interval's load report as the operator reads it, and the grants_version it echoes."""
        report = load_pb2.LoadReport(interval_seconds=STEP)
        usage_report(self.ledger, report)
        return usages(report), report.grants_version


class Fleet:
    """Sidecars, an allocator, and a clock; each step: work, report, allocate, deliver."""

    def __init__(
        self,
        limit: float,
        window: Window,
        *rates: float,
        start: float = 1_800_000_000.0,
        unit: float = 1.0,
        settles: Callable[[float], float] = lambda reserved: reserved,
    ) -> None:
        self.limit = limit
        self.window = window
        self.unit = unit
        self.settles = settles
        self.allocator = Allocator(horizon=2.0)
        self.allocator.set_limits([Limit(KEY, limit, window)])
        self.clock = Clock(start)
        self.sidecars: dict[str, SimSidecar] = {}
        for rate in rates:
            self.join(rate)
        self.version = 0
        self.offline: set[str] = set()

    @property
    def now(self) -> float:
        return self.clock.now

    def join(self, rate: float) -> SimSidecar:
        name = f"s{len(self.sidecars)}"
        sidecar = SimSidecar(name, rate, self.clock, self.limit, self.window, self.settles)
        self.sidecars[name] = sidecar
        return sidecar

    def step(self) -> None:
        for sidecar in self.sidecars.values():
            sidecar.work(STEP, self.unit)
        for name, sidecar in self.sidecars.items():
            if name not in self.offline:
                found, echoed = sidecar.report()
                self.allocator.report(name, STEP, found, echoed, self.now)
        for name, grants in self.allocator.allocate(self.now).items():
            self.version += 1
            self.allocator.sent(name, self.version, grants)
            if name not in self.offline:
                self.sidecars[name].apply(self.version, grants)
        self.check_invariant()
        self.clock.now += STEP

    def check_invariant(self) -> None:
        """What the fleet may spend in the current window: each sidecar's grant or its usage, whichever is more."""
        window = int(self.window.start(self.now))
        exposure = sum(max(s.grants.get(window, 0.0), s.used.get(window, 0.0)) for s in self.sidecars.values())
        assert exposure <= self.limit + 1e-6, f"granted {exposure} of {self.limit}"

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds / STEP)):
            self.step()

    def used(self) -> float:
        window = int(self.window.start(self.now))
        return sum(s.used.get(window, 0.0) for s in self.sidecars.values())


def test_split_meets_small_asks_and_gives_the_busy_one_the_rest_when_the_limit_is_short() -> None:
    shares = [Share(floor=0, in_force=0, want=90), Share(floor=0, in_force=0, want=10)]
    assert split(50, shares) == pytest.approx([40, 10])
    three = [Share(floor=0, in_force=0, want=90), Share(floor=0, in_force=0, want=50), Share(0, 0, 5)]
    assert split(50, three) == pytest.approx([22.5, 22.5, 5])


def test_nobody_gets_a_sliver_smaller_than_one_request() -> None:
    # 2 units left for three sidecars asking 10 each, a request costing 1: two get one each, not 0.67 all.
    shares = [Share(floor=5, in_force=5, want=15, unit=1.0) for _ in range(3)]
    assert sorted(split(17, shares)) == pytest.approx([5, 6, 6])


def test_split_gives_what_is_wanted_and_keeps_the_rest_in_the_pool() -> None:
    assert split(100, [Share(0, 0, 10), Share(0, 0, 20)]) == pytest.approx([10, 20])


def test_a_raise_waits_until_a_lowered_grant_is_in_force() -> None:
    # s0 holds 90 in force but now wants little; s1 wants 60. Lowering s0 frees nothing until it is echoed.
    grants = split(100, [Share(floor=5, in_force=90, want=10), Share(floor=0, in_force=0, want=60)])
    assert grants == pytest.approx([10, 10])  # s1 gets only the 10 nobody holds
    grants = split(100, [Share(floor=5, in_force=10, want=10), Share(floor=0, in_force=10, want=60)])
    assert grants == pytest.approx([10, 60])


def test_usage_above_a_grant_is_never_taken_back_and_blocks_raises() -> None:
    # Settled cost came in above the estimate: the floors already pass the limit.
    assert split(10, [Share(floor=8, in_force=6, want=12), Share(floor=4, in_force=4, want=9)]) == pytest.approx([8, 4])


def test_skewed_demand_spends_the_limit_within_it() -> None:
    fleet = Fleet(100.0, Window(3600), 20.0, 2.0, 1.0, 0.5, 0.5)
    fleet.run(30)
    assert fleet.used() >= 0.95 * 100.0
    assert fleet.used() <= 100.0
    busy = fleet.sidecars["s0"]
    assert busy.used[int(fleet.window.start(fleet.now))] > 50  # the busy sidecar got most of it


@pytest.mark.parametrize(("limit", "busy_rate"), [(100_000.0, 50.0), (20_000.0, 2_000.0)])
def test_an_idle_sidecar_that_starts_sending_is_admitted_within_two_seconds(limit: float, busy_rate: float) -> None:
    # Second case: the busy sidecars' grants cover the whole rest of the limit, so the newcomer's share must
    # first be taken back from them (lowered, echoed) before it can be given.
    fleet = Fleet(limit, Window(3600), busy_rate, busy_rate, 0.0)
    fleet.run(4)
    window = int(fleet.window.start(fleet.now))
    held = sum(s.grants[window] for s in fleet.sidecars.values() if window in s.grants)
    assert held == pytest.approx(limit) if busy_rate > 1000 else held < limit / 2
    late = fleet.sidecars["s2"]
    window = int(fleet.window.start(fleet.now))
    assert late.used.get(window, 0.0) == 0
    late.rate = 5.0
    started = fleet.now
    while late.used.get(window, 0.0) == 0:
        fleet.step()
        assert fleet.now - started <= 2.0, "the idle sidecar was not admitted within 2 s"


def test_an_idle_sidecars_grant_moves_to_a_busy_one() -> None:
    fleet = Fleet(1000.0, Window(3600), 10.0, 10.0)
    fleet.run(3)
    window = int(fleet.window.start(fleet.now))
    quiet = fleet.sidecars["s1"]
    quiet.rate = 0.0
    fleet.run(5)
    assert quiet.grants[window] - quiet.used[window] <= 5.0  # room for one more ask (its largest) is kept ...
    fleet.run(HOLD_S)
    assert quiet.grants[window] - quiet.used[window] < 0.05  # ... until it has been quiet for HOLD_S
    fleet.sidecars["s0"].rate = 40.0
    fleet.run(25)
    assert fleet.used() >= 950.0


def test_a_sparse_sender_keeps_room_for_its_next_request() -> None:
    # One request every 3 s: its smoothed rate falls to nothing between requests, its grant must not.
    fleet = Fleet(1000.0, Window(3600), 20.0, 0.0)
    sparse = fleet.sidecars["s1"]
    fleet.run(2)
    for _ in range(5):
        sparse.rate = 1 / STEP  # one request in this step
        fleet.step()
        sparse.rate = 0.0
        fleet.run(3)
    assert sum(sparse.used.values()) >= 4  # of its 5 requests, only the very first may wait for a grant


def test_a_sidecar_that_leaves_keeps_only_what_it_holds_and_its_share_is_not_given_twice() -> None:
    fleet = Fleet(100.0, Window(3600), 5.0, 5.0, 5.0)
    fleet.run(4)
    fleet.offline.add("s2")  # partitioned: it still spends its grant, and hears nothing
    fleet.allocator.disconnected("s2")
    for sidecar in fleet.sidecars.values():
        sidecar.rate = 30.0
    fleet.run(20)  # the invariant holds every step, with s2 spending what it held
    window = int(fleet.window.start(fleet.now))
    cut_off = fleet.sidecars["s2"]
    assert cut_off.grants[window] - 1.0 < cut_off.used[window] <= cut_off.grants[window]  # all it held, whole requests
    assert fleet.used() >= 95.0


def test_a_sidecar_that_joins_gets_a_share() -> None:
    fleet = Fleet(1000.0, Window(3600), 30.0)
    fleet.run(3)
    fleet.join(30.0)
    fleet.run(10)
    window = int(fleet.window.start(fleet.now))
    assert fleet.sidecars["s1"].used[window] > 100


def test_grants_for_the_next_window_arrive_before_it_turns() -> None:
    minute = Window(60)
    start = 1_800_000_000.0 - 10  # 10 s before a minute boundary (1_800_000_000 is one)
    fleet = Fleet(600.0, minute, 5.0, 5.0, start=start)
    fleet.run(9)
    turn = int(minute.end(start))
    assert fleet.now < turn
    for sidecar in fleet.sidecars.values():
        assert sidecar.grants.get(turn, 0.0) > 0, "no grant for the next window before the turn"
        ahead = [version for version, grants in sidecar.history if grants.get(turn, 0.0) > 0]
        assert ahead and fleet.now - AHEAD_S <= start + 10
    fleet.run(3)
    assert all(s.used.get(turn, 0.0) > 0 for s in fleet.sidecars.values())
    assert all(int(minute.start(start)) not in s.grants for s in fleet.sidecars.values())  # the old one is gone


def test_a_fleet_of_sparse_senders_spends_a_budget_whose_requests_settle_below_their_reservation() -> None:
    """Zipf-skewed demand over 100 sidecars, most of them asking once every few seconds, each request
    reserving 0.01 USD and settling at 30-100% of it: grants end at irregular sums, so the room for one
    more request is computed in floating point. The fleet asks for twice the budget in 20 s and goes on
    asking: once shares have settled it has spent the budget, not a request more, and nobody's room of
    one request is left unusable."""
    rng = random.Random(11)
    weights = [1 / (i + 1) for i in range(100)]
    rates = [1.0 * w / sum(weights) for w in weights]  # 100 requests/s of 0.01 USD in all
    limit = 1.0 * 20 * 0.65 / 2
    fleet = Fleet(limit, Window(3600), *rates, unit=0.01, settles=lambda reserved: reserved * rng.uniform(0.3, 1.0))
    fleet.run(50)
    assert fleet.used() <= limit + 1e-9
    assert fleet.used() >= 0.99 * limit
