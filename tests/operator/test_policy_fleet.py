"""LLMPolicy end to end: the real operator and several real sidecar processes in one namespace, with skewed
load through the sidecars to a simulated provider. The fleet's spend stays within its budget while most
of it stays usable, refusals carry the 429 shape, a requests-per-minute limit holds across sidecars, and
an operator killed mid-window does not let the fleet overspend. With two operator replicas, which talk over
mTLS with a CA's certificates as the chart sets them up, the leader shares each limit over both replicas'
sidecars by demand."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from llmroute.sim import SimProvider
from tests.egress import private_ca

from .replicas import Fleet, Sidecar
from .test_replicas import _is, leader, token

if TYPE_CHECKING:
    from conftest import Bench

# 1,000 USD per million tokens: a request of about 25 tokens costs about 0.025 USD.
PRICE = {"inputPerMTok": 1000.0, "outputPerMTok": 1000.0}
LOOPS = (6, 2, 1)  # concurrent request loops per sidecar: skewed demand


@dataclass
class Outcome:
    """What the app saw: every answer's cost, every refusal's headers and body, by the minute it was sent."""

    costs: list[float] = field(default_factory=list)
    sent_minutes: list[int] = field(default_factory=list)
    refusals: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    other: list[int] = field(default_factory=list)


async def drive(
    sidecars: list[Sidecar],
    seconds: float,
    outcome: Outcome,
    stop: asyncio.Event | None = None,
    loops: tuple[int, ...] = LOOPS,
) -> None:
    """Chat requests through every sidecar, loops[i] at a time through sidecar i, for `seconds`."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    deadline = time.monotonic() + seconds

    async def loop(session: aiohttp.ClientSession, sidecar: Sidecar) -> None:
        url = f"http://127.0.0.1:{sidecar.app}/v1/chat/completions"
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            sent = int(time.time()) // 60
            async with session.post(url, json=body) as response:
                payload = await response.json(content_type=None)
                if response.status == 200:
                    outcome.costs.append(float(response.headers["x-llmroute-cost-usd"]))
                    outcome.sent_minutes.append(sent)
                elif response.status == 429:
                    outcome.refusals.append((dict(response.headers), payload))
                    await asyncio.sleep(0.05)
                else:
                    outcome.other.append(response.status)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(loop(session, s) for s, n in zip(sidecars, loops, strict=True) for _ in range(n)))


async def publish(cluster: Bench, sim: SimProvider, policy: dict[str, Any], **route: Any) -> None:
    """The route (one priced backend unless `route` says otherwise) and the policy in namespace shop."""
    backend = {"name": "sim", "provider": "openai", "url": sim.url, "model": "m", "price": PRICE}
    await cluster.kube.apply_route("shop", "chat", {"models": ["chat"], "backends": [backend], **route})
    await cluster.kube.apply_policy("shop", "limits", policy)


async def start(
    cluster: Bench, replicas: Fleet, sim: SimProvider, policy: dict[str, Any], **route: Any
) -> list[Sidecar]:
    """One operator process, the route and the policy, three sidecars of namespace shop."""
    await publish(cluster, sim, policy, **route)
    [replica] = replicas.add_replicas(1)
    await replicas.start(replica)
    sidecars = []
    for i in range(len(LOOPS)):
        pod = f"app-{i}"
        sidecars.append(await replicas.sidecar(pod, token(cluster, pod)))
    await replicas.until(lambda: policy_programmed(cluster, len(sidecars)), "every sidecar enforcing the policy")
    return sidecars


async def policy_programmed(cluster: Bench, sidecars: int) -> bool:
    policy = await cluster.kube.get_policy("shop", "limits")
    programmed = cluster.condition(policy, "Programmed")
    return programmed.get("status") == "True" and f"all {sidecars} sidecars" in programmed.get("message", "")


def budget(limit: float) -> dict[str, Any]:
    return {"tier": "growth", "budgets": [{"name": "monthly", "window": "30d", "limitUSD": limit}]}


async def test_a_budget_holds_across_sidecars_with_skewed_load(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    limit = 2.0
    sidecars = await start(cluster, replicas, sim, budget(limit))
    outcome = Outcome()
    await drive(sidecars, 8.0, outcome)
    spent = sum(outcome.costs)
    assert outcome.other == []
    assert spent <= limit * 1.05, f"the fleet spent {spent:.4f} of a {limit} USD budget"
    assert spent >= limit * 0.85, f"only {spent:.4f} of {limit} USD was usable"
    headers, payload = outcome.refusals[-1]
    assert payload["error"]["code"] == "budget_exceeded"
    assert headers["x-llmroute-policy"] == "limits"
    assert int(headers["Retry-After"]) >= 1
    status = await replicas.until(lambda: spend_shown(cluster, spent), "the spend in the policy status")
    assert status["budgets"][0]["state"] == "Exhausted" or status["budgets"][0]["spentUSD"] >= limit * 0.85


async def test_with_two_replicas_a_busy_sidecar_on_the_follower_gets_the_share_it_needs(
    cluster: Bench, replicas: Fleet, sim: SimProvider, tmp_path: Path
) -> None:
    limit = 2.0
    replicas.tls = private_ca(tmp_path / "pki")  # the grants go over mTLS: each replica presents the certificate
    await publish(cluster, sim, budget(limit))
    first, second = replicas.add_replicas(2)
    await replicas.start(first)
    await replicas.until(lambda: _is(leader(cluster, replicas), first), "the first replica leading")
    await replicas.start(second)
    # Uneven: the one busy sidecar alone on the follower, two idle ones on the leader.
    pods = replicas.pods_for(second, 1, "busy") + replicas.pods_for(first, 2, "idle")
    sidecars = [await replicas.sidecar(pod, token(cluster, pod)) for pod in pods]
    await replicas.until(lambda: policy_programmed(cluster, len(sidecars)), "every sidecar enforcing the policy")
    assert await replicas.connected(second, "chat") == 1
    busy, late = Outcome(), Outcome()
    traffic = asyncio.create_task(drive(sidecars[:1], 12.0, busy, loops=(4,)))
    # Each replica granting its own sidecars half of the limit would hold the busy one to half of it.
    await replicas.until(lambda: _spent(busy, limit * 0.6), "the busy sidecar spending most of the limit", within=12)
    # Then a sidecar on the leader asks too: only what is left is its to spend (no replica grants alone).
    await drive(sidecars[1:], 4.0, late, loops=(1, 0))
    await traffic
    spent = sum(busy.costs) + sum(late.costs)
    assert busy.other == late.other == []
    assert spent <= limit * 1.05, f"the fleet spent {spent:.4f} of a {limit} USD budget"
    assert spent >= limit * 0.85, f"only {spent:.4f} of {limit} USD was usable"
    assert late.refusals[-1][1]["error"]["code"] == "budget_exceeded"
    await replicas.until(lambda: spend_shown(cluster, spent), "the fleet's spend in the policy status")


async def spend_shown(cluster: Bench, spent: float) -> dict[str, Any] | None:
    policy = await cluster.kube.get_policy("shop", "limits")
    status = (policy or {}).get("status") or {}
    budgets = status.get("budgets") or [{}]
    return status if abs(budgets[0].get("spentUSD", 0.0) - spent) < 1e-6 else None


async def test_a_requests_per_minute_limit_holds_across_sidecars(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    limit = 120
    sidecars = await start(cluster, replicas, sim, {"rateLimits": [{"name": "rpm", "requestsPerMinute": limit}]})
    outcome = Outcome()
    await drive(sidecars, 6.0, outcome)
    per_minute = {m: outcome.sent_minutes.count(m) for m in set(outcome.sent_minutes)}
    # A request sent just before a minute turns may be admitted in the next: the in-flight ones at most.
    assert max(per_minute.values()) <= limit + sum(LOOPS), per_minute
    assert len(outcome.costs) >= limit * 0.85
    codes = {payload["error"]["code"] for _, payload in outcome.refusals}
    assert codes == {"rate_limit_exceeded"}


async def test_the_operator_killed_mid_window_does_not_let_the_fleet_overspend(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    limit = 2.0
    sidecars = await start(cluster, replicas, sim, budget(limit))
    outcome = Outcome()
    traffic = asyncio.create_task(drive(sidecars, 8.0, outcome))
    await replicas.until(lambda: _spent(outcome, limit / 4), "a quarter of the budget spent")
    replica = replicas.replicas[0]
    assert replica.process is not None
    replica.process.kill()
    at_kill = sum(outcome.costs)
    await traffic
    spent = sum(outcome.costs)
    assert outcome.other == []
    assert spent <= limit * 1.05, f"the fleet spent {spent:.4f} of a {limit} USD budget with the operator gone"
    assert spent >= at_kill  # the sidecars kept serving on what they held


async def _spent(outcome: Outcome, amount: float) -> bool:
    return sum(outcome.costs) >= amount


async def test_downgrade_answers_only_from_the_cheaper_backends_once_the_budget_is_spent(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    dear = {"name": "dear", "provider": "openai", "url": sim.url, "model": "m", "price": PRICE}
    cheap = {**dear, "name": "cheap", "price": {"inputPerMTok": 0.5, "outputPerMTok": 0.5}}
    policy = budget(0.5)
    policy["budgets"][0].update(action="Downgrade", downgrade={"maxPricePerMTok": 1.0})
    sidecars = await start(cluster, replicas, sim, policy, backends=[dear, cheap], strategy="ordered")
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    served: list[tuple[str, str | None]] = []
    dear_spend = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for i in range(60):
            url = f"http://127.0.0.1:{sidecars[i % len(sidecars)].app}/v1/chat/completions"
            async with session.post(url, json=body) as response:
                await response.read()
                assert response.status == 200
                served.append((response.headers["x-llmroute-backend"], response.headers.get("x-llmroute-downgraded")))
                if served[-1][1] is None:
                    dear_spend += float(response.headers["x-llmroute-cost-usd"])
    # The route's first choice while a sidecar's share of the budget lasts (a sidecar's very first
    # request, before its first grant, is downgraded too), only the cheap backend once it is spent.
    assert {backend for backend, by in served if by is None} == {"dear"}
    assert {(backend, by) for backend, by in served if by is not None} == {("cheap", "limits")}
    # Full price is paid only within the budget (a sidecar may still hold room for one more request when
    # another has spent the rest, so the order of the last answers depends on timing; the spend does not).
    assert dear_spend <= 0.5 * 1.05, (dear_spend, served)
    assert sum(by is not None for _, by in served[-10:]) >= 8, served
