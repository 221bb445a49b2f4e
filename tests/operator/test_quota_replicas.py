"""Quotas across operator replicas: the leader allocates for every replica's sidecars from the reports the
others relay, and the others push its grants. The relay is called as FleetView's poll calls it (handover,
apply, export, imported, through JSON); sidecars play their side of the load protocol with real LoadReport and
LoadDirective messages. After every step the test checks the fleet-wide invariant: the grants the sidecars
apply and what they used never add up to more than the limit."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from llmroute.model.policy import Budget, Policy, QuotaKey, Window
from llmroute.operator.allocator import HOLD_S
from llmroute.operator.policystatus import budget_state
from llmroute.operator.quotas import QuotaService
from llmroute.v1 import load_pb2
from llmroute.v1.quota_keys import key_message

KEY = QuotaKey("shop", "limits", "hourly", "usd")
LIMIT = 20.0
POLICY = Policy("shop", "limits", budgets=(Budget("hourly", Window(3600), LIMIT),))
STEP = 0.5  # the report interval where policies apply
START = 500_000 * 3600.0 + 60  # a minute into an hour window: no turn during the test


@dataclass
class SimSidecar:
    """One sidecar as the protocol has it: applies each complete grant set, echoes its version, admits within it."""

    name: str
    rate: float  # USD asked for per second, in requests of 1 USD
    granted: float = 0.0
    version: int = 0
    used: float = 0.0
    demand: float = 0.0
    directives: list[load_pb2.LoadDirective] = field(default_factory=list)

    def receive(self, directive: load_pb2.LoadDirective) -> None:
        self.directives.append(directive)
        if directive.grants_version:
            self.version = directive.grants_version
            self.granted = sum(g.granted for g in directive.grants if g.window_start == int(START - 60))

    def work(self) -> None:
        asked = self.rate * STEP
        self.demand += asked
        while asked > 1e-9:
            cost = min(1.0, asked)
            asked -= cost
            if self.used + cost <= self.granted + 1e-9:
                self.used += cost

    def report(self) -> load_pb2.LoadReport:
        usage = load_pb2.QuotaUsage(
            key=key_message(KEY), window_start=int(START - 60), used=self.used, demand=self.demand, granted=self.granted
        )
        self.demand = 0.0
        return load_pb2.LoadReport(interval_seconds=STEP, quotas=[usage], grants_version=self.version)


@dataclass
class Replica:
    service: QuotaService
    sidecars: list[SimSidecar]


def replica(now: list[float], granting: bool, sidecars: list[SimSidecar]) -> Replica:
    service = QuotaService(report_interval=5.0, policy_interval=STEP, clock=lambda: now[0])
    service.granting = lambda: granting
    service.set_policies("shop", [POLICY])
    for sidecar in sidecars:
        service.opened(f"shop/{sidecar.name}", "shop", sidecar.receive)
    return Replica(service, sidecars)


def run(leader: Replica, other: Replica, now: list[float], seconds: float, *, polls: bool = True) -> None:
    """Sidecars report every STEP; both replicas allocate; the leader polls the other every second."""
    everyone = leader.sidecars + other.sidecars
    for step in range(int(seconds / STEP)):
        now[0] += STEP
        for r in (leader, other):
            for sidecar in r.sidecars:
                sidecar.work()
                r.service.report(f"shop/{sidecar.name}", sidecar.report())
            r.service.allocate()
        if polls and step % 2:
            other.service.apply(json.loads(json.dumps(leader.service.handover())))  # the POST body
            leader.service.imported("replica-b", json.loads(json.dumps(other.service.export())))  # its answer
        held = sum(max(s.granted, s.used) for s in everyone)
        assert held <= LIMIT + 1e-6, f"the fleet holds {held} of {LIMIT}: {everyone}"


def test_the_leader_gives_a_busy_sidecar_of_another_replica_the_share_it_needs() -> None:
    now = [START]
    idle = [SimSidecar(f"a-{i}", rate=0.05) for i in range(3)]  # three quiet sidecars on the leader
    busy = SimSidecar("b-0", rate=4.0)  # one busy sidecar on the other replica
    leader, other = replica(now, True, idle), replica(now, False, [busy])
    run(leader, other, now, 20.0)
    spent = busy.used + sum(s.used for s in idle)
    assert busy.used > LIMIT * 0.75, f"the busy sidecar got {busy.used} of {LIMIT}"  # far beyond half the limit
    assert spent >= LIMIT * 0.9, f"only {spent} of {LIMIT} was usable"
    assert all(s.used > 0 for s in idle)  # the quiet ones were not starved


def test_a_replica_without_a_leader_keeps_its_sidecars_grants_and_grants_nothing_itself() -> None:
    now = [START]
    busy = SimSidecar("b-0", rate=4.0)
    leader, other = replica(now, True, [SimSidecar("a-0", rate=0.0)]), replica(now, False, [busy])
    run(leader, other, now, 4.0)
    granted, version, sent = busy.granted, busy.version, len(busy.directives)
    assert granted > 0
    run(leader, other, now, 10.0, polls=False)  # the leader is gone
    assert (busy.granted, busy.version) == (granted, version)
    assert all(d.grants_version == 0 for d in busy.directives[sent:])
    assert busy.used <= granted


def test_a_single_replica_grants_its_own_sidecars_the_whole_limit() -> None:
    now = [START]
    busy = SimSidecar("a-0", rate=4.0)
    alone = replica(now, True, [busy])
    for _ in range(int(20.0 / STEP)):
        now[0] += STEP
        busy.work()
        alone.service.report("shop/a-0", busy.report())
        alone.service.allocate()
        assert max(busy.granted, busy.used) <= LIMIT + 1e-6
    assert busy.used >= LIMIT * 0.9


def test_a_new_leader_counts_what_the_old_leaders_unreconnected_sidecars_hold_until_they_report() -> None:
    now = [START]
    stray = SimSidecar("a-0", rate=1.0)  # on the leader; when it dies, this one reaches no other replica
    busy = SimSidecar("b-0", rate=1.0)
    leader, other = replica(now, True, [stray]), replica(now, False, [busy])
    run(leader, other, now, 4.0)
    ledger = json.loads(json.dumps(leader.service.ledger()))  # in the leader's last POST, kept by the other
    held = stray.granted
    assert held > stray.used + 1  # it holds room it has not spent yet
    # The leader dies. The other replica takes over (a Lease duration later) and inherits the ledger, while the
    # busy sidecar asks for more than the whole limit and the stray one spends part of what it holds.
    busy.rate, stray.rate = 8.0, 0.1
    other.service.granting = lambda: True
    other.service.inherit(ledger)

    def step(reporting: list[SimSidecar]) -> None:
        now[0] += STEP
        for sidecar in (stray, busy):
            sidecar.work()
            if sidecar in reporting:
                other.service.report(f"shop/{sidecar.name}", sidecar.report())
        other.service.allocate()
        fleet = max(stray.granted, stray.used) + max(busy.granted, busy.used)
        assert fleet <= LIMIT + 1e-6, f"the fleet holds {fleet} of {LIMIT}: {stray}, {busy}"

    for _ in range(int(6.0 / STEP)):
        step([busy])  # the stray one reports to nobody
    assert busy.used >= LIMIT - held - 1.0  # all but what the stray one holds went to the busy one
    assert stray.granted == held and stray.used < held
    # The stray sidecar reconnects to the new leader and goes quiet: its own report replaces what was inherited,
    # and what it holds beyond what it used goes back to the pool.
    other.service.opened("shop/a-0", "shop", stray.receive)
    stray.rate = 0.0
    for _ in range(int(6.0 / STEP)):
        step([stray, busy])
    assert stray.granted < held
    assert busy.used + stray.used >= LIMIT - 1.0


def test_the_leader_sends_its_own_sidecar_a_raise_only_once_a_ledger_handed_to_the_other_replicas_holds_it() -> None:
    now = [START]
    stray = SimSidecar("a-0", rate=4.0)  # on the leader; when it dies, this one reaches no other replica
    busy = SimSidecar("b-0", rate=8.0)
    leader, other = replica(now, True, [stray]), replica(now, False, [busy])
    leader.service.announcing = lambda: True  # another replica answers the leader's polls
    held: list[int] = []
    leader.service.on_held = lambda: held.append(1)
    now[0] += STEP
    stray.work()
    leader.service.report("shop/a-0", stray.report())
    leader.service.allocate()
    assert held and stray.granted == 0.0  # decided, not sent: nobody else knows of it yet
    ledger = json.loads(json.dumps(leader.service.ledger()))  # the next poll's body
    covered = leader.service.newest_version
    [[_, _, announced]] = ledger["shop/a-0"]
    assert announced > 0
    leader.service.announced(covered)
    assert stray.granted == announced  # sent once the other replica has it
    # The leader dies right then; the other replica takes over with that ledger, and its busy sidecar asks for
    # more than the whole limit while the stray one spends what it holds: the fleet never holds more than it.
    other.service.granting = lambda: True
    other.service.inherit(ledger)
    for _ in range(int(6.0 / STEP)):
        now[0] += STEP
        stray.work()
        busy.work()
        other.service.report("shop/b-0", busy.report())
        other.service.allocate()
        fleet = max(stray.granted, stray.used) + max(busy.granted, busy.used)
        assert fleet <= LIMIT + 1e-6, f"the fleet holds {fleet} of {LIMIT}: {stray}, {busy}"
    assert busy.used >= LIMIT - announced - 1.0


def test_a_raise_held_back_is_not_sent_once_the_leader_stops_granting_and_a_lowered_grant_goes_out_at_once() -> None:
    now = [START]
    sidecar = SimSidecar("a-0", rate=4.0)
    granting = [True]
    leader = replica(now, True, [sidecar])
    leader.service.granting = lambda: granting[0]
    leader.service.announcing = lambda: True

    def step() -> None:
        now[0] += STEP
        sidecar.work()
        leader.service.report("shop/a-0", sidecar.report())
        leader.service.allocate()

    step()
    leader.service.announced(leader.service.newest_version)
    first = sidecar.granted
    assert first > 0
    # Demand drops to nothing: the lowered grant is sent without waiting for a poll.
    sidecar.rate = 0.0
    for _ in range(int(HOLD_S / STEP) + 4):
        step()
    assert sidecar.granted < first
    # Demand comes back, and the leader is deposed before its next poll: the raise it held back is never sent.
    sidecar.rate, lowered = 8.0, sidecar.granted
    step()
    granting[0] = False
    leader.service.announced(leader.service.newest_version)
    assert sidecar.granted == lowered
    # Leading again, it decides afresh and sends the raise once announced.
    step()
    assert sidecar.granted == lowered
    granting[0] = True
    step()
    leader.service.announced(leader.service.newest_version)
    assert sidecar.granted > lowered


def test_the_granting_replica_knows_the_largest_piece_of_what_is_left_and_the_status_says_when_none_pays() -> None:
    now = [START]
    window = int(START - 60)
    service = QuotaService(report_interval=5.0, policy_interval=STEP, clock=lambda: now[0])
    service.set_policies("shop", [POLICY])
    # Five sidecars hold all of the 20 USD limit; each has 0.5 left while it refuses requests of 1 USD: 2.5 USD is
    # left in all, split into rooms smaller than one request.
    for i in range(5):
        service.opened(f"shop/s-{i}", "shop", lambda directive: None)
        usage = load_pb2.QuotaUsage(
            key=key_message(KEY), window_start=window, used=3.5, granted=4.0, rejected=2, smallest_ask=1.0
        )
        service.report(f"shop/s-{i}", load_pb2.LoadReport(interval_seconds=STEP, quotas=[usage]))
    service.granting = lambda: False  # a replica not granting does not know the fleet's grants
    service.allocate()
    figures = service.figures(KEY)
    assert figures is not None and figures.largest_piece is None
    assert budget_state(POLICY.budgets[0], figures, now[0]).state == "Ok"  # nothing it knows says otherwise
    service.granting = lambda: True
    service.allocate()
    figures = service.figures(KEY)
    assert figures is not None and figures.largest_piece == pytest.approx(0.5)
    assert LIMIT - figures.used > figures.smallest_ask  # the remainder alone would read Ok
    split = budget_state(POLICY.budgets[0], figures, now[0])
    assert split.state == "Exhausted"
    assert not split.spent_out  # every sidecar refuses now, but the budget is not spent: no BudgetExhausted Event
    # A replica of the previous release joins, with a static quarter of every limit: that share is held, and no
    # one sidecar's room (its sidecars split it), so it makes no piece of its own.
    service.set_aside(["old-0"], 0.25)
    service.allocate()
    figures = service.figures(KEY)
    assert figures is not None and figures.largest_piece == pytest.approx(0.5)
    assert budget_state(POLICY.budgets[0], figures, now[0]).state == "Exhausted"
