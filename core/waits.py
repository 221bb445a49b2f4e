"""Waiting for an asyncio.Event with a timeout, without losing a cancel.

On Python 3.11, `asyncio.wait_for(event.wait(), t)` swallows a cancel that arrives in the same loop
turn as the event: it returns the event's result and the task runs on as if never cancelled
(CPython gh-86296, fixed in 3.12). A loop that waits this way then outlives its `stop()`.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to `seconds` for `event`; True if it is set, False if the time ran out."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
