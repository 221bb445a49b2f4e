"""Background loops as named, supervised tasks: a crash is logged under the loop's name and the loop starts
again after a back-off, never a silent stop (kopf's daemons, Erlang's supervisors)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

FIRST_RESTART_S = 1.0
MAX_RESTART_S = 30.0
"""Back-off between restarts doubles from the first to the most; a run that lasted longer starts it over."""


def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    log: logging.Logger,
    *,
    on_crash: Callable[[str], None] | None = None,
    first_restart: float = FIRST_RESTART_S,
    max_restart: float = MAX_RESTART_S,
) -> asyncio.Task[None]:
    """Run `loop()` as the task `name`, again after each crash. A loop that returns has finished on purpose
    and is not restarted; cancelling the task stops it. `on_crash(name)` counts crashes (a metric)."""
    return asyncio.get_running_loop().create_task(
        _supervised(name, loop, log, on_crash, first_restart, max_restart), name=name
    )


async def _supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    log: logging.Logger,
    on_crash: Callable[[str], None] | None,
    first_restart: float,
    max_restart: float,
) -> None:
    delay = first_restart
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception:
            if time.monotonic() - started > max_restart:
                delay = first_restart  # it ran a good while: a fresh crash, not a crash loop
            log.exception("background task %r crashed; restarting in %.1f s", name, delay)
            if on_crash is not None:
                on_crash(name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_restart)


def log_failure(task: asyncio.Task[None], log: logging.Logger) -> None:
    """A done-callback for one-shot background tasks: an exception is logged under the task's name, not left
    for asyncio's 'exception was never retrieved' at garbage collection."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %r failed", task.get_name(), exc_info=error)
