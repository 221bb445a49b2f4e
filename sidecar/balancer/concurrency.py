"""Concurrency caps: a backend's maxConcurrency (a backend at its cap is not a candidate) and a priority's
maxConcurrency (a FIFO gate where a request waits for a slot until its deadline)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from .estimator import BackendStats


def has_headroom(stats: BackendStats, limit: int | None) -> bool:
    """Whether one more request fits under the backend's maxConcurrency (None: unlimited). Never waits."""
    return limit is None or stats.in_flight < limit


class GateTimeout(TimeoutError):
    """No slot freed up before the request's deadline (the request path answers 504)."""


class ConcurrencyGate:
    """At most `limit` requests inside at once; the others wait in arrival order, each up to its own
    timeout. Slots are handed straight to the next waiter, so a newcomer never overtakes the queue."""

    __slots__ = ("_active", "_limit", "_waiters", "name")

    def __init__(self, limit: int, name: str = "concurrency") -> None:
        self._limit = limit
        self.name = name
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """Fixed for the gate's life: a reload with a new cap makes a new gate (holders release to the old)."""
        return self._limit

    @property
    def active(self) -> int:
        """Requests holding a slot."""
        return self._active

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        return len(self._waiters)

    async def acquire(self, max_wait: float | None) -> None:
        """Take a slot, waiting at most `max_wait` seconds (None: forever); raises GateTimeout."""
        if self._active < self._limit and not self._waiters:
            self._active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(max_wait):
                await fut
        except (TimeoutError, asyncio.CancelledError) as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed over just as we gave up: pass it on
            else:
                with suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                raise GateTimeout(
                    f"{self.name}: all {self._limit} slots busy for {max_wait:.3g} s (maxConcurrency)"
                ) from None
            raise

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if any, else to the pool."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self._active -= 1

    @asynccontextmanager
    async def slot(self, max_wait: float | None) -> AsyncIterator[None]:
        """`async with gate.slot(remaining):` holds a slot for the block."""
        await self.acquire(max_wait)
        try:
            yield
        finally:
            self.release()
