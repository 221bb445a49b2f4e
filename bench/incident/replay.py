"""Replay the traffic against one policy: every arrival sent at its time from the script's start (open
loop: a slow policy gets the same requests as a fast one), or by clients that each wait for their answer
(closed loop: a new user's app), every outcome kept."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.incident import client
from bench.incident.policies import APP_TIMEOUT_S, Outcome, Router
from bench.incident.scenario import Arrival


@dataclass(frozen=True)
class Record:
    arrival: Arrival
    sent: float
    """Seconds from the script's start when it was actually sent."""
    outcome: Outcome


async def _one(router: Router, arrival: Arrival, epoch: float) -> Record:
    sent = time.time() - epoch
    started = time.monotonic()
    try:
        async with asyncio.timeout(APP_TIMEOUT_S):
            outcome = await router.send(arrival, sent)
    except TimeoutError:
        seconds = time.monotonic() - started
        outcome = Outcome(
            client.Attempt("timeout", seconds, detail=f"the app gave up after {APP_TIMEOUT_S:g} s"), seconds, 0
        )
    return Record(arrival, sent, outcome)


async def replay(router: Router, arrivals: list[Arrival], epoch: float) -> list[Record]:
    """Send each arrival at epoch + arrival.at (time.time()); return the records in arrival order."""
    tasks = []
    last_report = 0.0
    for arrival in arrivals:
        delay = epoch + arrival.at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(router, arrival, epoch)))
        if arrival.at - last_report >= 10:
            last_report = arrival.at
            done = [t.result() for t in tasks if t.done()]
            failed = sum(1 for r in done if r.outcome.final.error is not None)
            print(
                f"  {router.name}: t={arrival.at:5.1f} s  sent {len(tasks)}  done {len(done)}  failed {failed}",
                file=sys.stderr,
                flush=True,
            )
    return list(await asyncio.gather(*tasks))


async def closed_loop(
    router: Router,
    clients: int,
    duration: float,
    epoch: float,
    next_arrival: Callable[[int, int, float], Arrival],
) -> list[Record]:
    """`clients` apps that each send a request as soon as their previous one is answered, from epoch until
    `duration` seconds after it; `next_arrival(app, n, t)` makes app number `app`'s n-th request (from 0),
    sent at `t`. The records by send time."""

    async def app(number: int) -> list[Record]:
        records: list[Record] = []
        while (t := time.time() - epoch) < duration:
            records.append(await _one(router, next_arrival(number, len(records), max(t, 0.0)), epoch))
        return records

    delay = epoch - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    runs = await asyncio.gather(*(app(number) for number in range(clients)))
    return sorted((r for run in runs for r in run), key=lambda r: r.sent)
