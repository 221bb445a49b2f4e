"""wait_event: the event, the timeout, and a cancel that races the event (lost by wait_for on 3.11)."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmroute.waits import wait_event


async def test_returns_true_when_the_event_is_set() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True


async def test_returns_false_when_the_time_runs_out() -> None:
    started = time.monotonic()
    assert await wait_event(asyncio.Event(), 0.05) is False
    assert 0.04 < time.monotonic() - started < 1


@pytest.mark.parametrize("turns", range(6))
async def test_a_cancel_in_the_same_turn_as_the_event_stops_the_waiter(turns: int) -> None:
    """The shape of the control-plane client's report loop: it must end when its task is cancelled,
    whichever loop turn the cancel lands in relative to the event (each `turns` value is one of them)."""
    event = asyncio.Event()

    async def loop_until_cancelled() -> None:
        while True:
            await wait_event(event, 0.05)
            event.clear()

    task = asyncio.create_task(loop_until_cancelled())
    await asyncio.sleep(0)  # the task is waiting now
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(2):
            await task
    assert task.cancelled()
