"""Which backend a hedge or retry goes to, decided from live estimates (no sockets: the estimates are fed)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmroute.model import Priority, parse_spec
from llmroute.sidecar.dispatch import _TOO_SLOW, MIN_ATTEMPT_S, Call, Dispatcher, _Attempts
from llmroute.sidecar.inbound.chat import CHAT
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.runtime import RouteRuntime, UpstreamPool


def backend(name: str) -> dict[str, str]:
    return {"name": name, "provider": "openai", "url": f"http://127.0.0.1:9/{name}", "model": "m"}


def route(*names: str, strategy: str = "latency") -> RouteRuntime:
    spec = {"models": ["chat"], "strategy": strategy, "backends": [backend(name) for name in names]}
    return RouteRuntime(parse_spec(spec, name="r", namespace="ns"), UpstreamPool())


def call_on(runtime: RouteRuntime, priority: Priority, deadline: float) -> Call:
    """A JSON chat call of `priority` on `runtime`, due at `deadline` (a monotonic time)."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    return Call(runtime, CHAT, body, False, priority, deadline, frozenset())


def attempts_on(call: Call, running: asyncio.Task[None], name: str) -> _Attempts:
    """The call's attempts, with `running` its attempt on backend `name`."""
    attempts = _Attempts(Dispatcher(SidecarMetrics()), call, list(call.runtime.candidates))
    attempts.running[running] = call.runtime.by_name[name]
    return attempts


def answered_in(runtime: RouteRuntime, name: str, seconds: float) -> None:
    """Feed the backend's estimator one answer that took `seconds`."""
    stats = runtime.by_name[name].stats
    now = time.monotonic()
    stats.finish(stats.start(now - seconds), now)


async def test_a_hedge_skips_a_backend_expected_to_miss_the_deadline() -> None:
    runtime = route("first", "slow", "quick")
    answered_in(runtime, "slow", 5.0)
    answered_in(runtime, "quick", 0.2)
    first_running = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    attempts = attempts_on(call_on(runtime, "critical", time.monotonic() + 2.0), first_running, "first")
    # A hedge beside `first` goes past `slow` (5 s expected, 2 s left) to `quick`; a failover keeps plan order.
    assert attempts.peek(hedge=True) is runtime.by_name["quick"]
    assert attempts.peek() is runtime.by_name["slow"]
    await first_running


async def test_ordered_passes_over_a_backend_far_slower_than_its_peers_though_it_could_make_the_deadline() -> None:
    runtime = route("primary", "peer", strategy="ordered")
    answered_in(runtime, "primary", 8.5)
    answered_in(runtime, "peer", 0.3)
    dispatcher = Dispatcher(SidecarMetrics())
    batch = call_on(runtime, "batch", time.monotonic() + 20.0)
    assert [c.name for c in dispatcher._plan(batch, time.monotonic())] == ["peer", "primary"]
    answered_in(runtime, "primary", 0.5)  # slower than the peer, but not far slower: its order holds again
    for _ in range(5):
        answered_in(runtime, "primary", 0.5)
    assert dispatcher._plan(batch, time.monotonic())[0].name == "primary"
    # The first plan sent the primary a shadow probe: its only answer was of a request sent 8.5 s before.
    await dispatcher.aclose()


def stalled_peer(seconds: float) -> RouteRuntime:
    """An `ordered` route: the primary answers in 8.5 s; the peer in 0.6 s, but the two requests sent to it
    after its latest answer have waited `seconds`, past its p95 (it has stalled)."""
    runtime = route("primary", "peer", strategy="ordered")
    answered_in(runtime, "primary", 8.5)
    stats = runtime.by_name["peer"].stats
    now = time.monotonic()
    for _ in range(5):
        stats.finish(stats.start(now - seconds - 1.2), now - seconds - 0.6)
    stats.start(now - seconds)
    stats.start(now - seconds + 0.1)
    assert stats.stalled(time.monotonic())
    return runtime


async def test_ordered_puts_a_far_slower_backend_after_a_peer_stalled_for_less_than_it_takes() -> None:
    # The 21:00 incident's cascade with `ordered`: the primary answers in 8.5 s, mid is ejected, and cheap has
    # two requests overdue for a moment. In route order the 8.5 s primary went first: batch requests (20 s
    # deadline, which 8.5 s "makes") waited 7.9-9.1 s there, normal ones (3 s) waited on it before failing over.
    dispatcher = Dispatcher(SidecarMetrics())
    runtime = stalled_peer(1.5)
    deadlines: dict[Priority, float] = {"batch": 20.0, "normal": 3.0}
    for priority, deadline in deadlines.items():
        call = call_on(runtime, priority, time.monotonic() + deadline)
        assert [c.name for c in dispatcher._plan(call, time.monotonic())] == ["peer", "primary"], priority
    # A peer silent for longer than the primary takes is the later answer: the primary goes first again.
    runtime = stalled_peer(12.0)
    call = call_on(runtime, "batch", time.monotonic() + 20.0)
    assert [c.name for c in dispatcher._plan(call, time.monotonic())] == ["primary", "peer"]
    await dispatcher.aclose()  # the shadow probes the plans sent (to a closed port) are not waited for


def test_a_normal_request_leaves_a_backend_the_moment_it_stalls_not_after_a_p95_of_its_own() -> None:
    runtime = route("primary", "second")
    primary = runtime.by_name["primary"]
    stats = primary.stats
    stats.finish(stats.start(0.5), 1.0)  # its answers take 0.5 s (the p95), on a clock driven by hand
    call = call_on(runtime, "normal", 100.0)
    stats.start(2.0)
    stats.start(2.05)
    stats.start(2.3)  # ours: sent before anything was overdue
    # It slowed down: the two requests before ours are overdue at 2.5 and 2.55, and ours leaves with them
    # then, not at its own p95 (2.8).
    assert Dispatcher._hedge_at(call, primary, 2.3, 2.3, eager=False) == pytest.approx(2.55)
    assert Dispatcher._hedge_at(call, primary, 2.3, 2.56, eager=False) == 2.56
    # One sent once the stall had begun (nothing better was left for it) waits its own p95 first.
    stats.start(2.7)
    assert Dispatcher._hedge_at(call, primary, 2.7, 2.7, eager=False) == pytest.approx(3.2)
    assert Dispatcher._hedge_at(call, primary, 2.7, 3.2, eager=False) == 3.2
    # The backend answers again (a request sent at 3.3): a lone request sent after that is its tail, hedged
    # only after max(3 x p95, p95 + 1 s), with a look now and then whether requests sent later stall.
    stats.finish(stats.start(3.3), 3.6)
    stats.start(3.7)
    assert Dispatcher._hedge_at(call, primary, 3.7, 3.7, eager=False) == pytest.approx(4.2)
    assert Dispatcher._hedge_at(call, primary, 3.7, 4.2, eager=False) == pytest.approx(4.2 + 0.5 / 4)


async def test_the_deadline_rescue_waits_until_the_running_attempt_is_late() -> None:
    # The incident bench's critical class: a 1.5 s deadline, the primary's p95 0.56 s, the next backend's 0.65 s.
    runtime = route("primary", "next", strategy="ordered")
    answered_in(runtime, "primary", 0.56)
    answered_in(runtime, "next", 0.65)
    primary = runtime.by_name["primary"]
    now = time.monotonic()
    critical = call_on(runtime, "critical", now + 1.5)
    running = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    attempts = attempts_on(critical, running, "primary")
    # Not 0.2 s in (1.5 s less the next backend's doubled p95): no sooner than the primary is late (its p95,
    # 0.56 s), and here at its last chance, which leaves the next backend 1.5 times its p95.
    late = Dispatcher._late_at(critical, primary, now, eager=True)
    assert late == pytest.approx(now + 0.56, abs=0.01)
    rescue = Dispatcher._rescue(critical, attempts, now, late)
    assert rescue.at == rescue.last == pytest.approx(now + 1.5 - 1.5 * 0.65, abs=0.01)
    # A class that does not hedge: late past the primary's p95 as well, though its hedge waits for the tail.
    normal = call_on(runtime, "normal", now + 3.0)
    attempts = attempts_on(normal, running, "primary")
    late = Dispatcher._late_at(normal, primary, now, eager=False)
    assert late == pytest.approx(now + 0.56, abs=0.01)
    # With a 3 s deadline the rescue may go from the deadline less the next's doubled p95, before its last
    # chance: as speculative as a hedge, and paid for as one.
    rescue = Dispatcher._rescue(normal, attempts, now, late)
    assert rescue.at == pytest.approx(now + 3.0 - 1.3, abs=0.01)
    assert rescue.last == pytest.approx(now + 3.0 - 1.5 * 0.65, abs=0.01)
    assert Dispatcher._rescue(normal, attempts, now, now + 1.9).at == pytest.approx(now + 1.9, abs=0.01)
    assert Dispatcher._rescue(normal, attempts, now, now + 2.5).at == pytest.approx(rescue.last, abs=0.01)
    # A next backend that answers in 30 ms still gets twice MIN_ATTEMPT_S: a rescue at the deadline less 50 ms
    # would be refused for too little time left.
    quick = route("primary", "next", strategy="ordered")
    answered_in(quick, "primary", 0.56)
    answered_in(quick, "next", 0.03)
    normal = call_on(quick, "normal", now + 1.5)
    attempts = attempts_on(normal, running, "primary")
    rescue = Dispatcher._rescue(normal, attempts, now, now + 1.2)
    assert rescue.at == rescue.last == pytest.approx(now + 1.5 - 2 * MIN_ATTEMPT_S, abs=0.01)
    await running


async def test_a_rescue_before_its_last_chance_is_paid_for_as_a_hedge() -> None:
    # Once hedges have used their part of the retry budget, a speculative rescue is refused as a hedge would
    # be; the part kept for fail-overs still pays for the rescue at its last chance.
    runtime = route("primary", "next", strategy="ordered")
    answered_in(runtime, "next", 0.65)
    call = call_on(runtime, "normal", time.monotonic() + 3.0)
    running = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    attempts = attempts_on(call, running, "primary")
    while runtime.retry_budget.try_acquire_retry(time.monotonic(), hedge=True):
        pass
    assert attempts.next_candidate(_TOO_SLOW, hedge=True) is None
    assert call.not_tried is not None and "kept for fail-overs" in call.not_tried
    assert attempts.next_candidate(_TOO_SLOW) is runtime.by_name["next"]
    await running
