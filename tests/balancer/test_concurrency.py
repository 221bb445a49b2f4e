"""Concurrency caps: a saturated backend is skipped; a priority's cap queues requests in order until their
deadline."""

import asyncio

import pytest

from llmroute.sidecar.balancer import BackendStats, ConcurrencyGate, GateTimeout, has_headroom


def test_a_backend_at_its_cap_has_no_headroom() -> None:
    stats = BackendStats()
    assert has_headroom(stats, 1)
    token = stats.start(0.0)
    assert not has_headroom(stats, 1)
    assert has_headroom(stats, None)
    stats.finish(token, 0.1)
    assert has_headroom(stats, 1)


async def test_batch_requests_beyond_the_cap_wait_their_turn_in_order() -> None:
    gate = ConcurrencyGate(2, "batch")
    order: list[int] = []

    async def job(i: int, hold: asyncio.Event) -> None:
        async with gate.slot(5.0):
            order.append(i)
            await hold.wait()

    holds = [asyncio.Event() for _ in range(5)]
    tasks = [asyncio.create_task(job(i, holds[i])) for i in range(5)]
    await asyncio.sleep(0)
    assert (order, gate.active, gate.waiting) == ([0, 1], 2, 3)
    for i in range(5):
        holds[i].set()
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert (gate.active, gate.waiting) == (0, 0)


async def test_a_request_that_cannot_get_a_slot_before_its_deadline_fails_clearly() -> None:
    gate = ConcurrencyGate(1, "batch")
    await gate.acquire(None)
    with pytest.raises(GateTimeout, match=r"batch: all 1 slots busy for 0\.02 s"):
        await gate.acquire(0.02)
    assert gate.waiting == 0
    gate.release()
    await gate.acquire(0.0)
    assert gate.active == 1


async def test_a_newcomer_never_overtakes_a_waiter() -> None:
    gate = ConcurrencyGate(1)
    await gate.acquire(None)
    waiter = asyncio.create_task(gate.acquire(1.0))
    await asyncio.sleep(0)
    gate.release()
    newcomer = asyncio.create_task(gate.acquire(0.01))
    await waiter
    with pytest.raises(GateTimeout):
        await newcomer


async def test_a_slot_handed_to_a_request_that_just_gave_up_goes_to_the_next() -> None:
    gate = ConcurrencyGate(1)
    await gate.acquire(None)
    gives_up = asyncio.create_task(gate.acquire(1.0))
    next_in_line = asyncio.create_task(gate.acquire(1.0))
    await asyncio.sleep(0)
    gate.release()  # hands the slot to gives_up...
    gives_up.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    await next_in_line
    assert (gate.active, gate.waiting) == (1, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = ConcurrencyGate(1)
    await gate.acquire(None)
    waiter = asyncio.create_task(gate.acquire(None))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.release()
    assert gate.active == 0
