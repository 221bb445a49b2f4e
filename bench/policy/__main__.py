"""LLMPolicy share bench: N sidecars with skewed demand against one budget and one rate limit.

    python -m bench.policy [--sidecars 20 200] [--seconds 20] [--tail 30] [--peer] [--write docs/performance.md]
                           [--plot docs/img/policy.png]

For each N, the real control plane (ControlPlane with its QuotaService, on 127.0.0.1) serves N simulated
sidecars in this process. Each holds the sidecar's real quota ledger (llmroute.sidecar.policy), reports
on a real gRPC load stream at the interval the operator sets (and early when a request finds too small a
share), applies the grants it is sent and admits its own traffic against them: Zipf-skewed request
rates (sidecar i asks 1/(i+1) of the first's, 200 requests/s in all), every other request counting against a 1h
budget (reserving 0.01 USD, settling at a random 30..100% of it after 200 ms) and the others against a
requests-per-minute limit. Both limits are sized so the fleet's demand over `--seconds` is twice the
limit, and the demand goes on for `--tail` seconds more (within the same minute), so what sidecars hold
and use late counts; both windows begin when the run does (the clocks of the control plane and the
ledgers are shifted to a window start).

Measured per run: the overshoot of each limit (settled use above the limit, in % of it), the share of
each limit used, the time an idle sidecar that starts sending at a quarter of the run waits for
its first admitted request (at 2 requests/s), and how long a sidecar waits from a request refused for want
of a share to its next raise (the allocation's cadence as a sidecar sees it, whether or not the raise
admits its next request). The same again with the control plane stopped at a quarter
of the run (sidecars keep what they hold): the overshoot must stay at 0.

With `--peer` the control plane leads a second replica (a real FleetView polling it over HTTP on 127.0.0.1,
which has no sidecars of its own), as the chart's two replicas do: the sidecars are all the leader's, so
every raise of theirs is announced to that replica before it is sent. Without it the control plane is alone.

Where the rest of the budget is: every 0.25 s the bench reads every ledger, so at the end (and over time,
in the plot) the part of the budget not spent splits into what sidecars hold unused (room for at least
one more request, or a remainder smaller than one) and what no sidecar holds (the operator's pool, and
lowered grants not yet echoed). Requests are sent on a fixed schedule (a late one is sent at once, not
dropped), and how late they went out is reported: on a loaded machine a lagging event loop delays the
simulated sidecars' requests and reports, which is the bench's artefact, not the allocator's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry

from llmroute.model.policy import QuotaKey
from llmroute.model.policy_parse import parse_policy_spec
from llmroute.operator.auth import InsecureAuthenticator
from llmroute.operator.controlplane import ControlPlane
from llmroute.operator.fleet import FleetView
from llmroute.operator.peerport import PeerServer
from llmroute.sidecar.policy.admission import MINUTE
from llmroute.sidecar.policy.ledger import FIT, Quota, QuotaLedger, Reservation
from llmroute.sidecar.policy.wire import apply_directive, usage_report
from llmroute.v1 import load_pb2, routes_pb2, rpc

NAMESPACE = "bench"
COST_USD = 0.01
LATENCY_S = 0.2
TOTAL_RATE = 200.0  # requests per second asked by the whole fleet
IDLE_RATE = 2.0  # requests per second of the sidecar idle until a quarter of the run
BEGIN, END = "<!-- policy:begin -->", "<!-- policy:end -->"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class SimSidecar:
    """One sidecar's policy side: ledger, load stream, its traffic."""

    name: str
    rate: float
    ledger: QuotaLedger
    quotas: list[Quota]
    asked: int = 0
    admitted: int = 0
    asked_by_quota: list[int] = field(default_factory=lambda: [0, 0])
    first_ask: float | None = None
    first_admit: float | None = None
    early: asyncio.Event = field(default_factory=asyncio.Event)
    interval: float = 5.0
    late: list[float] = field(default_factory=list)
    """How late each request went out after its scheduled time (the event loop's lag), in seconds."""
    unmet_since: float | None = None
    """When a request first found too small a share since the sidecar's grants were last raised."""
    raised_after: list[float] = field(default_factory=list)
    """From a request that found too small a share to the next raise of the sidecar's grants, in seconds."""

    def unmet(self) -> None:
        """The ledger refused a request for want of a share: report at once, and time the raise."""
        if self.unmet_since is None:
            self.unmet_since = time.monotonic()
        self.early.set()

    def applied(self, before: list[float]) -> None:
        """A directive was applied: a raise ends the wait that began with a refusal."""
        if self.unmet_since is not None and any(q.granted > b for q, b in zip(self.quotas, before, strict=True)):
            self.raised_after.append(time.monotonic() - self.unmet_since)
            self.unmet_since = None

    def try_request(self, now: float) -> Reservation | None:
        """Every other request counts against the budget, the others against the rate limit, so each limit
        is measured on its own traffic rather than cut short by the other."""
        self.asked += 1
        if self.first_ask is None:
            self.first_ask = now
        quota = self.quotas[self.asked % 2]
        self.asked_by_quota[self.asked % 2] += 1
        amount = COST_USD if quota.quantity == "usd" else 1.0
        if not quota.ask(amount, now):
            quota.rejected += 1
            return None
        self.admitted += 1
        if self.first_admit is None:
            self.first_admit = now
        return Reservation(((quota, amount),), clock=self.ledger.clock)


@dataclass(frozen=True)
class Sample:
    """Where the budget is at one moment, in USD: spent, in flight, held unused by sidecars, held by nobody."""

    t: float
    used: float
    reserved: float
    room: float
    """Held by sidecars with room for at least one more request."""
    remainders: float
    """Held by sidecars in pieces smaller than one request."""
    pool: float
    """Granted to no sidecar."""
    unechoed: float | None
    """Of the pool, what the operator still counts as granted: grants it lowered that the sidecars have
    not echoed yet (None once the control plane is stopped)."""

    def line(self, limit: float) -> str:
        """The sample in % of the limit, for the log."""
        unechoed = self.unechoed or 0.0
        shares = (self.used, self.reserved, self.room, self.remainders, unechoed, self.pool - unechoed)
        return f"{self.t:5.1f} s " + " ".join(f"{x / limit * 100:5.1f}" for x in shares)

    @classmethod
    def of(cls, t: float, limit: float, quotas: list[Quota], counted: float | None) -> Sample:
        """`counted`: the sum of the grants in force as the operator counts them (None: it is stopped)."""
        room = remainders = held = 0.0
        for quota in quotas:
            held += max(quota.granted, quota.used + quota.reserved)
            left = quota.granted - quota.used - quota.reserved
            if quota.used + quota.reserved + COST_USD * quota.scale <= quota.granted * FIT:
                room += left
            elif left > 0:
                remainders += left
        used, reserved = sum(q.used for q in quotas), sum(q.reserved for q in quotas)
        unechoed = None if counted is None else max(0.0, counted - held)
        return cls(t, used, reserved, room, remainders, limit - held, unechoed)


@dataclass
class Run:
    sidecars: int
    killed: bool
    kill_at: float
    budget_usd: float
    requests_limit: float
    spent_usd: float
    requests: int
    idle_wait_s: float | None
    budget_demand: float
    """What the fleet asked of the budget, in settled USD (65% of the estimates), as a multiple of the limit."""
    requests_demand: float
    series: list[Sample]
    """Where the budget was, every 0.25 s."""
    late_p99_s: float
    """The 99th percentile of how late the simulated sidecars' requests went out."""
    raised_after: list[float]
    """Every wait from a request refused for want of a share to the sidecar's next raise, sorted."""

    def overshoot(self, used: float, limit: float) -> float:
        return max(0.0, used - limit) / limit * 100

    def row(self) -> dict[str, Any]:
        return {
            "sidecars": self.sidecars,
            "operator": f"killed at {self.kill_at:g} s" if self.killed else "up",
            "budget_overshoot_pct": self.overshoot(self.spent_usd, self.budget_usd),
            "budget_used_pct": self.spent_usd / self.budget_usd * 100,
            "rpm_overshoot_pct": self.overshoot(self.requests, self.requests_limit),
            "rpm_used_pct": self.requests / self.requests_limit * 100,
            "idle_wait_s": self.idle_wait_s,
            "budget_demand": self.budget_demand,
            "requests_demand": self.requests_demand,
            "budget_held_end_pct": self.end().room / self.budget_usd * 100,
            "budget_remainders_end_pct": self.end().remainders / self.budget_usd * 100,
            "budget_pool_end_pct": self.end().pool / self.budget_usd * 100,
            "budget_95_s": self.reached(0.95),
            "late_p99_s": self.late_p99_s,
            "raised_after_p50_s": _quantile(self.raised_after, 0.5),
            "raised_after_p99_s": _quantile(self.raised_after, 0.99),
        }

    def end(self) -> Sample:
        return self.series[-1]

    def reached(self, share: float) -> float | None:
        """When the fleet had first spent `share` of the budget (None: never)."""
        return next((s.t for s in self.series if s.used >= share * self.budget_usd), None)


@contextlib.asynccontextmanager
async def leading(plane: ControlPlane) -> AsyncIterator[None]:
    """The control plane as the leader of two replicas: it polls a second one (no sidecars) over HTTP."""
    follower = ControlPlane(authenticator=InsecureAuthenticator(), report_interval=5.0, registry=CollectorRegistry())
    share = FleetView(follower, "follower", holder=lambda: "leader").share
    server = PeerServer(share, {"127.0.0.1"}, CollectorRegistry())
    await server.start("127.0.0.1", 0)
    view = FleetView(plane, "leader", (("127.0.0.1", server.port),))
    plane.quotas.granting = view.granting
    polling = asyncio.create_task(view.run(lambda: True))
    try:
        yield
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await server.stop()


async def run_once(n: int, seconds: float, tail: float, killed: bool, seed: int, peer: bool = False) -> Run:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(n)]
    rates = [TOTAL_RATE * w / sum(weights) for w in weights]
    # Half the traffic each; the fleet asks for twice each limit over the run (settled cost averages 65% of
    # the 0.01 USD reserved).
    budget = TOTAL_RATE / 2 * seconds * COST_USD * 0.65 / 2
    requests_limit = round(TOTAL_RATE / 2 * seconds / 2)
    policy = parse_policy_spec(
        {
            "budgets": [{"name": "hourly", "window": "1h", "limitUSD": budget}],
            "rateLimits": [{"name": "rpm", "requestsPerMinute": requests_limit}],
        },
        name="limits",
        namespace=NAMESPACE,
    )
    now = time.time()
    offset = (now // 3600 + 1) * 3600 + 1 - now  # one second into a fresh hour (and minute)

    def clock() -> float:
        return time.time() + offset

    plane = ControlPlane(authenticator=InsecureAuthenticator(), report_interval=5.0, registry=CollectorRegistry())
    plane.quotas.clock = clock  # the bench's shifted clock: windows begin with the run
    await plane.start("127.0.0.1:0")
    plane.publish_policies(NAMESPACE, [policy])
    fleet = contextlib.AsyncExitStack()
    if peer:
        await fleet.enter_async_context(leading(plane))
    allocator = asyncio.create_task(plane.quotas.run())
    hourly = QuotaKey(NAMESPACE, "limits", "hourly", "usd")
    rpm = QuotaKey(NAMESPACE, "limits", "rpm", "requests")
    sims = []
    for i in range(n + 1):  # the last one is idle until a quarter of the run
        ledger = QuotaLedger(local=False, clock=clock)
        budget_q = ledger.track(hourly, policy.budgets[0].window, budget)
        rpm_q = ledger.track(rpm, MINUTE, requests_limit)
        sim = SimSidecar(f"sidecar-{i}", rates[i] if i < n else IDLE_RATE, ledger, [budget_q, rpm_q])
        ledger.on_unmet = sim.unmet
        sims.append(sim)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    stop = asyncio.Event()
    start = clock()
    tasks = [asyncio.create_task(_report(channel, s, stop)) for s in sims]
    tasks += [
        asyncio.create_task(_traffic(s, clock, start, seconds, seconds + tail, rng.random(), idle=i == n))
        for i, s in enumerate(sims)
    ]
    series: list[Sample] = []
    stopped = asyncio.Event()

    def sample() -> Sample:
        counted = None if stopped.is_set() else _counted(plane, hourly, clock())
        return Sample.of(clock() - start, budget, [s.quotas[0] for s in sims], counted)

    tasks.append(asyncio.create_task(_sample(series, sample)))
    if killed:
        await asyncio.sleep(seconds / 4)
        stopped.set()
        await fleet.aclose()
        allocator.cancel()
        await plane.stop(0)
        log(f"  N={n}: control plane stopped at {seconds / 4:.0f} s")
    await asyncio.sleep(seconds + tail - (seconds / 4 if killed else 0) + LATENCY_S + 0.5)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    series.append(sample())
    await fleet.aclose()
    allocator.cancel()
    await channel.close(None)
    if not killed:
        await plane.stop(0)
    spent = sum(s.quotas[0].used for s in sims)
    requests = round(sum(s.quotas[1].used for s in sims))
    idle = sims[-1]
    wait = None if idle.first_admit is None or idle.first_ask is None else idle.first_admit - idle.first_ask
    budget_asked = sum(s.asked_by_quota[0] for s in sims) * COST_USD * 0.65 / budget
    requests_asked = sum(s.asked_by_quota[1] for s in sims) / requests_limit
    late_p99 = _quantile(sorted(x for s in sims for x in s.late), 0.99)
    raised = sorted(x for s in sims for x in s.raised_after)
    asked = (budget_asked, requests_asked)
    return Run(n, killed, seconds / 4, budget, requests_limit, spent, requests, wait, *asked, series, late_p99, raised)


def _quantile(values: list[float], share: float) -> float:
    """A quantile of sorted values (0 when there are none)."""
    return values[int(share * (len(values) - 1))] if values else 0.0


async def _sample(series: list[Sample], sample: Callable[[], Sample]) -> None:
    """Where the budget is, every 0.25 s, until cancelled."""
    while True:
        series.append(sample())
        await asyncio.sleep(0.25)


def _counted(plane: ControlPlane, key: QuotaKey, now: float) -> float:
    """The grants in force on `key` as the operator counts them: a lowered grant until its sidecar echoes it."""
    allocator = plane.quotas.allocator
    start = int(allocator.limits[key].window.start(now))
    total = 0.0
    for sidecar in allocator.sidecars.values():
        holding = sidecar.holdings.get((key, start))
        if holding is not None:
            total += max(holding.in_force(sidecar.echoed), holding.floor)
    return total


async def _traffic(
    sim: SimSidecar, clock: Any, start: float, seconds: float, until: float, phase: float, *, idle: bool
) -> None:
    """The sidecar's requests, evenly spaced at its rate, until `until`; each admitted one settles after
    LATENCY_S. The idle one starts at a quarter of `seconds`. The schedule is fixed: a request the event
    loop wakes late for is sent at once (and its lateness kept), so a lagging loop does not thin the demand."""
    gap = 1 / sim.rate
    due = start + (seconds / 4 if idle else 0.0) + gap * phase
    while due - start < until:
        await asyncio.sleep(max(0.0, due - clock()))
        now = clock()
        sim.late.append(now - due)
        reservation = sim.try_request(now)
        if reservation is not None:
            asyncio.get_running_loop().call_later(LATENCY_S, _settle, reservation)
        due += gap


def _settle(reservation: Reservation) -> None:
    reservation.settle(COST_USD * random.uniform(0.3, 1.0), 0)


async def _report(channel: grpc.aio.Channel, sim: SimSidecar, stop: asyncio.Event) -> None:
    """The load stream: a report per interval, or at once on unmet demand (at most every 0.1 s)."""
    call: Any = rpc.stream_load(channel)(None, metadata=(("authorization", "Bearer bench"),))
    node = routes_pb2.Node(pod=sim.name, namespace=NAMESPACE)
    last = time.monotonic()
    await call.write(load_pb2.LoadReport(node=node))

    async def directives() -> None:
        async for directive in call:
            if directive.report_interval_seconds:
                sim.interval = directive.report_interval_seconds
            before = [q.granted for q in sim.quotas]
            apply_directive(sim.ledger, directive)
            sim.applied(before)

    reader = asyncio.create_task(directives())
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(sim.early.wait(), max(0.0, sim.interval - (time.monotonic() - last)))
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - last)))
            except TimeoutError:
                pass
            sim.early.clear()
            report = load_pb2.LoadReport(interval_seconds=time.monotonic() - last)
            last = time.monotonic()
            usage_report(sim.ledger, report)
            await call.write(report)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the control plane went away: the sidecar keeps what it holds
    finally:
        reader.cancel()


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table: the first two columns left as they are, the figures right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---:|---|" + "---:|" * (len(header) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def table(runs: list[Run]) -> str:
    header = ["sidecars", "operator", "budget: asked", "overshoot", "used", "rpm: asked", "overshoot", "used"]
    header += ["idle sidecar admitted after", "refused to raised, p50 / p99", "requests sent late, p99"]
    rows = []
    for run in runs:
        r = run.row()
        wait = "never" if r["idle_wait_s"] is None else f"{r['idle_wait_s']:.2f} s"
        rows.append(
            [
                str(r["sidecars"]),
                r["operator"],
                f"{r['budget_demand']:.2f}x",
                f"{r['budget_overshoot_pct']:.2f}%",
                f"{r['budget_used_pct']:.1f}%",
                f"{r['requests_demand']:.2f}x",
                f"{r['rpm_overshoot_pct']:.2f}%",
                f"{r['rpm_used_pct']:.1f}%",
                wait,
                f"{r['raised_after_p50_s'] * 1000:.0f} / {r['raised_after_p99_s'] * 1000:.0f} ms",
                f"{r['late_p99_s'] * 1000:.0f} ms",
            ]
        )
    return _markdown(header, rows)


def rest_table(runs: list[Run]) -> str:
    """Where the budget not spent is at the end of each run, and when 95% of it was spent."""
    header = [
        "sidecars",
        "operator",
        "budget used",
        "95% used after",
        "unused at the end: held by sidecars as room for a request",
        "as remainders smaller than one",
        "held by no sidecar",
    ]
    rows = []
    for run in runs:
        r = run.row()
        reached = "never" if r["budget_95_s"] is None else f"{r['budget_95_s']:.1f} s"
        rows.append(
            [
                str(r["sidecars"]),
                r["operator"],
                f"{r['budget_used_pct']:.1f}%",
                reached,
                f"{r['budget_held_end_pct']:.2f}%",
                f"{r['budget_remainders_end_pct']:.2f}%",
                f"{r['budget_pool_end_pct']:.2f}%",
            ]
        )
    return _markdown(header, rows)


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"N={r.sidecars}\n{'killed' if r.killed else 'up'}" for r in runs]
    budget = [r.row()["budget_used_pct"] for r in runs]
    rpm = [r.row()["rpm_used_pct"] for r in runs]
    x = range(len(runs))
    fig, (ax, over) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1, 1.3]})
    ax.bar([i - 0.2 for i in x], budget, 0.4, label="budget (USD)")
    ax.bar([i + 0.2 for i in x], rpm, 0.4, label="requests per minute")
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("% of the limit used")
    ax.set_title("Share of each limit used (100% = the limit)")
    ax.legend(loc="lower right")
    for run in runs:
        if run.killed:
            continue
        t = [s.t for s in run.series]
        used = [s.used / run.budget_usd * 100 for s in run.series]
        held = [(s.used + s.reserved + s.room + s.remainders) / run.budget_usd * 100 for s in run.series]
        counted = [100 - ((s.pool - (s.unechoed or 0.0)) / run.budget_usd * 100) for s in run.series]
        (line,) = over.plot(t, used, label=f"N={run.sidecars}: spent")
        color = line.get_color()
        over.plot(t, held, linestyle=":", color=color, label=f"N={run.sidecars}: granted, as the sidecars apply it")
        over.plot(
            t, counted, linestyle="--", color=color, label=f"N={run.sidecars}: granted, as the operator counts it"
        )
    over.axhline(100, color="black", linewidth=0.8)
    over.set_xlabel("seconds into the window (operator up)")
    over.set_ylabel("% of the budget")
    over.set_title("The budget over the run: spent and granted")
    over.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(doc: Path, runs: list[Run], seconds: float, command: str, load: str) -> None:
    text = doc.read_text()
    block = (
        f"{BEGIN}\n`{command}` ({platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},"
        f" limits sized for {seconds:.0f} s of demand, load average {load}):\n\n{table(runs)}\n\n"
        f"Where the budget is at the end of each run:\n\n{rest_table(runs)}\n{END}"
    )
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text += "\n" + block + "\n"
    doc.write_text(text)


def load_average() -> str:
    """The 1-minute load average now: the machine is shared, and the bench's figures are read against it."""
    return f"{os.getloadavg()[0]:.1f}"


async def main(args: argparse.Namespace) -> None:
    runs = []
    loads = [load_average()]
    for n in args.sidecars:
        for killed in (False, True):
            log(f"N={n}, operator {'killed mid-run' if killed else 'up'} ...")
            run = await run_once(n, args.seconds, args.tail, killed, seed=n, peer=args.peer)
            log(f"  {run.row()}")
            log("  the budget over the run (% of it): t, spent, reserved, room, remainders, unechoed, free")
            for sample in run.series[::4]:
                log("    " + sample.line(run.budget_usd))
            runs.append(run)
            loads.append(load_average())
    load = f"{min(loads, key=float)}-{max(loads, key=float)} on {os.cpu_count()} cores"
    print(table(runs))
    print(rest_table(runs))
    print(f"load average {load}")
    command = "python -m bench.policy " + " ".join(sys.argv[1:])
    if args.write:
        write(args.write, runs, args.seconds, command, load)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__)
    parser.add_argument("--sidecars", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--seconds", type=float, default=20.0, help="the limits are sized for this long")
    parser.add_argument("--tail", type=float, default=30.0, help="demand goes on this much longer (within the minute)")
    parser.add_argument("--peer", action="store_true", help="the control plane leads a second replica (no sidecars)")
    parser.add_argument("--write", type=Path, default=None, help="replace the figures in this Markdown file")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of the shares used")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
