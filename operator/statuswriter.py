"""Batched, rate-limited status writes: at most one patch per route per interval, none when nothing changed.

Reconciles and sidecar changes only mark a route; the writer builds its status when the route is due
(the first change at once, later ones coalesced until `interval` after the previous write) and
skips the patch when the status equals what the object already has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp

from llmroute.waits import wait_event

from .kubeapi import KubeAPI, KubeError

log = logging.getLogger(__name__)

Key = tuple[str, str]


class StatusSource(Protocol):
    """Who knows what a route's status should be."""

    def desired_status(self, namespace: str, name: str) -> tuple[dict[str, Any], Mapping[str, Any]] | None:
        """(desired status, status the object has now), or None when the route no longer exists."""


class StatusWriter:
    """Writes LLMRoute (or, by `plural`, LLMPolicy) status through the status subresource (JSON merge patch)."""

    def __init__(
        self,
        api: KubeAPI,
        source: StatusSource,
        *,
        interval: float = 1.0,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        may_write: Callable[[], bool] = lambda: True,
        plural: str = "llmroutes",
    ) -> None:
        self._api = api
        self._plural = plural
        self._may_write = may_write
        self._source = source
        self._interval = interval
        self._retry_after = retry_after
        self._clock = clock
        self._due: dict[Key, float] = {}
        self._last_write: dict[Key, float] = {}
        self._written: dict[Key, Mapping[str, Any]] = {}
        self._wake = asyncio.Event()

    def mark(self, namespace: str, name: str) -> None:
        """The route's status may have changed: write it when it is due."""
        key = (namespace, name)
        due = self._last_write.get(key, float("-inf")) + self._interval
        self._due[key] = min(self._due.get(key, due), due)
        self._wake.set()

    def resume(self) -> None:
        """This replica may write again (it became the leader): forget what it wrote before, others wrote since."""
        self._written.clear()
        self._last_write.clear()

    def forget(self, namespace: str, name: str) -> None:
        """The route is gone: drop what is remembered about it."""
        key = (namespace, name)
        self._due.pop(key, None)
        self._last_write.pop(key, None)
        self._written.pop(key, None)

    async def run(self) -> None:
        """Write due statuses until cancelled."""
        while True:
            now = self._clock()
            due = [key for key, at in self._due.items() if at <= now]
            for key in due:
                del self._due[key]
                try:
                    await self._write(key)
                except Exception:
                    self._due.setdefault(key, self._clock() + self._retry_after)  # a crash loses no write
                    raise
            self._wake.clear()
            if self._due:
                await wait_event(self._wake, max(0.0, min(self._due.values()) - self._clock()))
            else:
                await self._wake.wait()

    async def _write(self, key: Key) -> None:
        namespace, name = key
        if not self._may_write():
            return  # not the leader: the leader writes it (and resume() re-marks every route here)
        wanted = self._source.desired_status(namespace, name)
        if wanted is None:
            self.forget(namespace, name)
            return
        desired, current = wanted
        if desired == (self._written.get(key) or current):
            return
        try:
            await self._api.request(
                "PATCH",
                f"/apis/llmroute.io/v1alpha1/namespaces/{namespace}/{self._plural}/{name}/status",
                {"status": desired},
                content_type="application/merge-patch+json",
            )
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, KubeError) and exc.status == 404:
                self.forget(namespace, name)
                return
            log.warning("status of %s %s/%s not written (%s); retrying", self._plural, namespace, name, exc)
            self._due[key] = self._clock() + self._retry_after
            return
        self._last_write[key] = self._clock()
        self._written[key] = desired
