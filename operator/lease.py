"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every replica serves sidecars; only the leader writes status and Events. A replica leads while its
last successful renewal is younger than `renew_deadline` (less than the Lease duration), checked on
every read of `leading`, so one that cannot renew stops writing before another replica may take the
Lease over. Another replica takes over once the holder has not renewed for the Lease duration, timed
by its own clock from when it last saw the Lease change (no clock agreement between nodes needed).
Updates carry the resourceVersion read, so of two replicas racing for the Lease the API server
accepts one and answers the other 409.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .kubeapi import KubeAPI, KubeError

log = logging.getLogger(__name__)

LEASE_DURATION_S = 15.0
RENEW_DEADLINE_S = 10.0
RETRY_PERIOD_S = 2.0


def _micro_time(now: datetime.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    now = now or datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    """Keeps trying to hold one Lease; `leading` says whether this replica may write right now."""

    def __init__(
        self,
        api: KubeAPI,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = LEASE_DURATION_S,
        renew_deadline: float = RENEW_DEADLINE_S,
        retry_period: float = RETRY_PERIOD_S,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.api = api
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self._clock = clock
        self._held_until = float("-inf")  # monotonic: we may act as leader until then
        self._was_leading = False
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0

    @property
    def leading(self) -> bool:
        """True while this replica's last renewal is younger than the renew deadline."""
        return self._clock() < self._held_until

    @property
    def holder(self) -> str | None:
        """The holder in the Lease as last read, while it renewed within a Lease duration (else None)."""
        if self._observed is None or self._clock() >= self._observed_at + self.lease_duration:
            return None
        return self._observed[0] or None

    async def run(self) -> None:
        """Acquire and renew until cancelled; never raises for API trouble (it is logged and retried)."""
        try:
            while True:
                await self._attempt()
                self._notify()
                await asyncio.sleep(self._until_next(self.retry_period))
                self._notify()  # a renewal that came too late has ended the leadership meanwhile
        finally:
            self._held_until = float("-inf")
            self._notify()

    def _until_next(self, retry: float) -> float:
        """Sleep at most until the leadership would lapse, so a lapse is noticed (and announced) on time."""
        if self.leading:
            return max(0.0, min(retry, self._held_until - self._clock()))
        return retry

    def _notify(self) -> None:
        leading = self.leading
        if leading != self._was_leading:
            self._was_leading = leading
            log.info("%s leadership of %s", "acquired" if leading else "lost", self.path)
            if self.on_change is not None:
                self.on_change(leading)

    async def release(self) -> None:
        """Give the Lease up (on shutdown) so another replica takes over without waiting it out."""
        self._held_until = float("-inf")
        self._notify()
        try:
            lease = await self.api.request("GET", self.path)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=_micro_time())
            await self._update(lease)
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not release %s: %s", self.path, exc)

    async def _attempt(self) -> None:
        started = self._clock()
        try:
            if await self._try_acquire_or_renew():
                self._held_until = started + self.renew_deadline
        except KubeError as exc:
            if exc.status != 409:  # 409: another replica wrote the Lease first
                log.warning("leader election: %s", exc)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("leader election: API server unreachable: %s", exc)

    async def _try_acquire_or_renew(self) -> bool:
        """One round: True when this replica holds the Lease now."""
        try:
            lease: dict[str, Any] = await self.api.request("GET", self.path)
        except KubeError as exc:
            if exc.status != 404:
                raise
            await self.api.request("POST", self.path.rsplit("/", 1)[0], self._new_lease())
            return True
        spec: dict[str, Any] = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity") or ""
        observed = (holder, str(spec.get("renewTime")))
        now = self._clock()
        if observed != self._observed:
            self._observed, self._observed_at = observed, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # held by another replica that renewed within its duration
        stamp = _micro_time()
        if holder != self.identity:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=round(self.lease_duration), renewTime=stamp)
        await self._update(lease)
        return True

    async def _update(self, lease: dict[str, Any]) -> None:
        """Write the Lease's spec if nobody wrote it since it was read (the resourceVersion read, else 409)."""
        version = (lease.get("metadata") or {}).get("resourceVersion")
        await self.api.request(
            "PATCH",
            self.path,
            {"metadata": {"resourceVersion": version}, "spec": lease["spec"]},
            content_type="application/merge-patch+json",
        )

    def _new_lease(self) -> dict[str, Any]:
        namespace, name = self.path.split("/namespaces/", 1)[1].split("/leases/")
        stamp = _micro_time()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.lease_duration),
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
        }
