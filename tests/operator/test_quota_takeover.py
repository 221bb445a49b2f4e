"""A double failure across operator replicas, with real processes under the API emulator: the leader is
SIGKILLed right after it raised its own sidecar's grant, and that sidecar can reach no other replica, so it
keeps spending what it holds while the other replica takes over and grants a busy sidecar of its own. The
replica taking over must count what the cut-off sidecar holds, or the fleet spends its budget twice."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from llmroute.sim import SimProvider

from .replicas import Fleet, Sidecar
from .test_policy_fleet import Outcome, drive, policy_programmed, publish
from .test_replicas import _is, leader, token

if TYPE_CHECKING:
    from conftest import Bench


async def granted(replicas: Fleet, sidecar: Sidecar) -> float:
    """The sidecar's grant of the budget, from its own /metrics (llmroute_policy_granted)."""
    async with replicas.session.get(f"http://127.0.0.1:{sidecar.admin}/metrics") as response:
        text = await response.text()
    lines = [line for line in text.splitlines() if line.startswith("llmroute_policy_granted{")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'quantity="usd"' in line)


async def test_a_leader_killed_right_after_raising_its_own_sidecars_grant_leaves_the_fleet_within_budget(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    limit = 1.0
    # A monthly budget: no window turns while the test runs.
    await publish(cluster, sim, {"budgets": [{"name": "monthly", "window": "30d", "limitUSD": limit}]})
    first, second = replicas.add_replicas(2)
    await replicas.start(first)
    await replicas.until(lambda: _is(leader(cluster, replicas), first), "the first replica leading")
    await replicas.start(second)
    # Each sidecar dials one replica only: when the leader dies, its sidecar reaches no other replica.
    [stray_pod], [busy_pod] = replicas.pods_for(first, 1, "stray"), replicas.pods_for(second, 1, "busy")
    stray = await replicas.sidecar(stray_pod, token(cluster, stray_pod), dial=[first])
    busy = await replicas.sidecar(busy_pod, token(cluster, busy_pod), dial=[second])
    await replicas.until(lambda: policy_programmed(cluster, 2), "both sidecars enforcing the policy")
    assert await granted(replicas, stray) == 0.0
    # The stray sidecar starts asking; the leader raises its grant, and dies as soon as the sidecar applies it.
    stray_spent = Outcome()
    stray_traffic = asyncio.create_task(drive([stray], 16.0, stray_spent, loops=(4,)))
    held = await replicas.until(lambda: granted(replicas, stray), "the stray sidecar's first grant", within=30)
    assert first.process is not None
    first.process.kill()
    # The other replica takes the Lease (3 s), waits out the dead one (another 3 s) and grants its busy sidecar
    # what it does not count as held elsewhere.
    busy_spent = Outcome()
    await drive([busy], 14.0, busy_spent, loops=(4,))
    await stray_traffic
    spent = sum(stray_spent.costs) + sum(busy_spent.costs)
    assert stray_spent.other == busy_spent.other == []
    # The stray sidecar kept serving on what it held: the budget the new leader had to count.
    assert sum(stray_spent.costs) >= min(held, limit) * 0.25, (held, sum(stray_spent.costs))
    assert spent <= limit * 1.05, (
        f"the fleet spent {spent:.4f} of a {limit} USD budget (the stray sidecar {sum(stray_spent.costs):.4f}"
        f" of the {held:.4f} it held, the busy one {sum(busy_spent.costs):.4f})"
    )
    assert busy_spent.refusals[-1][1]["error"]["code"] == "budget_exceeded"
    assert await _is(leader(cluster, replicas), second)
