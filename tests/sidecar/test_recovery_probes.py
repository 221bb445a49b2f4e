"""Recovery probing against a real sidecar and a scripted simulated provider: a backend whose answer looked
like a recovery and whose next trial failed is probed at the usual pace, not after every app request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from llmroute.sim import Behavior, Latency, SimProvider

from .harness import backend_entry, chat_body, sidecar_for

COMPLETIONS = "POST /v1/chat/completions"
FAST = Behavior(latency=Latency.fixed(0.01))
SLOW = Behavior(latency=Latency.fixed(0.3))
DOWN = Behavior(error_rate=1.0, error_statuses=(503,))


class Scripted(SimProvider):
    """A simulated provider that answers its n-th completions request (1-based) as `script(n)` says, so a
    test can put a backend into an exact state (slow, then fast once, then failing) without racing it."""

    def __init__(self, name: str, script: Callable[[int], Behavior]) -> None:
        super().__init__(name, seed=1)
        self._script = script

    @property
    def behavior(self) -> Behavior:
        return self._script(self.stats.by_path[COMPLETIONS])


@asynccontextmanager
async def providers(*sims: SimProvider) -> AsyncIterator[None]:
    for sim in sims:
        await sim.start()
    try:
        yield
    finally:
        for sim in sims:
            await sim.stop()


def route(primary: SimProvider, flaky: SimProvider) -> dict[str, Any]:
    return {
        "models": ["chat"],
        "strategy": "latency",
        "backends": [backend_entry("primary", primary), backend_entry("flaky", flaky)],
        "outlierDetection": {"consecutiveFailures": 1000},
    }


async def test_a_failing_backend_whose_last_answer_was_fast_is_not_probed_on_every_request(tmp_path: Path) -> None:
    # The backend answers its first request slowly and its second fast (under half its estimate: it looks
    # like a recovery, which is probed again as soon as each probe is back), then fails every request with
    # an immediate 503. Its failed trial must end the recovery probing: probes go back to the usual pace (one
    # after 2 s without news) and slow down further while they keep failing, instead of following every app
    # request. Ejection is set out of reach, as for a backend that fails half its requests (which rarely
    # fails five in a row), so what is measured is the probing alone.
    primary = SimProvider("primary", behavior=FAST, seed=1)
    flaky = Scripted("flaky", lambda n: SLOW if n <= 1 else FAST if n == 2 else DOWN)
    async with providers(primary, flaky), sidecar_for(tmp_path, route(primary, flaky)) as sidecar:
        base_url = f"http://127.0.0.1:{sidecar.app_server.port}/v1"
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            started = time.monotonic()
            statuses = []
            for _ in range(120):  # at least 6 s of traffic at up to 20 requests/s
                response = await http.post("/chat/completions", json=chat_body())
                statuses.append(response.status_code)
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - started
    assert statuses == [200] * 120  # the app never notices: the failures were probes or failed over
    seen = flaky.stats.by_path[COMPLETIONS]
    assert flaky.stats.by_outcome["error"] >= 1, "the scripted failure never began: the test proves nothing"
    # Its first two answers, then at most one probe per 2 s (the usual pace, an upper bound: failed probes in
    # a row slow it further). Following every request would be about 100.
    assert seen <= 3 + elapsed / 2, f"{seen} requests reached the failing backend in {elapsed:.1f} s"
