"""Background loops as named, supervised tasks: a crash is logged under the loop's name and the loop starts
again after a back-off, never a silent stop (kopf's daemons, Erlang's supervisors)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

FIRST_RESTART_S = 1.0
MAX_RESTART_S = 30.0
"""Back-off between restarts doubles from the first to the most; a run that lasted longer starts it over."""

Loop = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Crash:
    """One crash of a supervised loop: which, what it raised, and when it runs again."""

    task: str
    error: Exception
    restart_in: float


def supervise(
    name: str,
    loop: Loop,
    log: logging.Logger,
    *,
    on_crash: Callable[[str], None] | None = None,
    first_restart: float = FIRST_RESTART_S,
    max_restart: float = MAX_RESTART_S,
) -> asyncio.Task[None]:
    """Run `loop()` as the task `name`, again after each crash. A loop that returns has finished on purpose
    and is not restarted; cancelling the task stops it. `on_crash(name)` counts crashes (a metric)."""

    def crashed(crash: Crash) -> None:
        if on_crash is not None:
            on_crash(crash.task)

    return asyncio.get_running_loop().create_task(
        _supervised(name, loop, log, crashed, first_restart, max_restart), name=name
    )


class Supervisor:
    """A component's background loops under one supervisor: each runs as its named task (see supervise()),
    every crash goes to one `on_crash` (a metric, an Event), and stop() ends them all.

    Add a loop with `start(name, loop)`; the loop need not catch what it does not expect."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        on_crash: Callable[[Crash], None] | None = None,
        first_restart: float = FIRST_RESTART_S,
        max_restart: float = MAX_RESTART_S,
    ) -> None:
        self.log = log
        self.on_crash = on_crash
        self.first_restart = first_restart
        self.max_restart = max_restart
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Loop) -> asyncio.Task[None]:
        """Run `loop()` supervised as the task `name` (unique among this supervisor's tasks)."""
        if name in self.tasks and not self.tasks[name].done():
            raise ValueError(f"a background task named {name!r} is already running")
        task = asyncio.get_running_loop().create_task(
            _supervised(name, loop, self.log, self._crashed, self.first_restart, self.max_restart), name=name
        )
        self.tasks[name] = task
        return task

    def _crashed(self, crash: Crash) -> None:
        if self.on_crash is not None:
            self.on_crash(crash)

    async def stop(self) -> None:
        """Cancel every loop and wait until they have stopped."""
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _supervised(
    name: str,
    loop: Loop,
    log: logging.Logger,
    on_crash: Callable[[Crash], None],
    first_restart: float,
    max_restart: float,
) -> None:
    delay = first_restart
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception as error:
            if time.monotonic() - started > max_restart:
                delay = first_restart  # it ran a good while: a fresh crash, not a crash loop
            log.exception("background task %r crashed; restarting in %.1f s", name, delay)
            try:
                on_crash(Crash(name, error, delay))
            except Exception:
                log.exception("reporting the crash of background task %r failed", name)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_restart)


def log_failure(task: asyncio.Task[None], log: logging.Logger) -> None:
    """A done-callback for one-shot background tasks: an exception is logged under the task's name, not left
    for asyncio's 'exception was never retrieved' at garbage collection."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("background task %r failed", task.get_name(), exc_info=error)
