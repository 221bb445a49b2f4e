"""The control plane's CA, kept in a ConfigMap of every namespace whose pods may be injected.

Istio's `istio-ca-root-cert` pattern: the webhook mounts the ConfigMap (optional) into each sidecar,
and the kubelet refreshes that file in running pods when the ConfigMap changes, so a renewed CA
reaches every sidecar without a restart; a pod spec with the CA inlined would keep the old one until
recreated. The CA comes from a file (the chart mounts the serving Secret's ca.crt), re-read every
POLL_S; after a change the bundle holds the new CA and the one it replaces for OVERLAP_S, so a sidecar
that already has the new bundle still trusts a replica that serves the old certificate a little longer.
Only the leader writes; eligible namespaces are those labelled for injection (or the watched ones).
A ConfigMap of that name the operator did not create is left alone: it is reported (a Warning Event on it,
a metric) instead of overwritten. A failed write is retried, counted, and posted as a Warning Event on
the operator's Pod once per run of failures, so `kubectl describe pod` shows why sidecars lack the CA.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Counter

from llmroute.waits import wait_event

from .crashes import PodRef
from .events import post_event_about
from .injection import NAMESPACE_LABEL
from .kubeapi import KubeAPI, KubeError

log = logging.getLogger(__name__)

CA_KEY = "ca.crt"
POLL_S = 10.0
OVERLAP_S = 3600.0
"""How long a replaced CA stays trusted next to the new one: far longer than the kubelet's refresh of
mounted files (about a minute), and short enough that a CA retired for cause is not trusted for long."""
RETRY_S = 5.0
CONFLICT_RETRY_S = 15.0
"""How often a namespace whose ConfigMap belongs to someone else is looked at again (it may be deleted)."""
MANAGED_BY = {"app.kubernetes.io/managed-by": "llmroute"}
RESYNC_S = 300.0
"""Every namespace is rewritten this often, so a ConfigMap someone deleted or edited comes back."""
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def certificates(pem: str) -> list[str]:
    """The PEM certificates in `pem`, each normalised (no surrounding space), in order."""
    return [block.strip() for block in _PEM.findall(pem)]


class CABundle:
    """The trust bundle to publish: the CA file's certificates, then for a while the ones they replaced."""

    def __init__(self, path: Path, *, overlap: float = OVERLAP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._overlap = overlap
        self._clock = clock
        self._current = self._read()
        if not self._current:
            raise ValueError(f"{path} holds no PEM certificate")
        self._previous: list[str] = []
        self._replaced_at = 0.0

    def _read(self) -> list[str]:
        return certificates(self.path.read_text())

    def refresh(self) -> bool:
        """Re-read the file and expire the replaced CA; True when the bundle changed."""
        changed = False
        try:
            current = self._read()
        except OSError as exc:
            log.warning("cannot read the CA file %s (%s); publishing the last one read", self.path, exc)
            current = self._current
        if current and current != self._current:
            self._previous = [c for c in self._current if c not in current]
            self._replaced_at = self._clock()
            self._current = current
            changed = True
            log.info("the CA in %s changed: publishing it, the old one kept for %.0f s", self.path, self._overlap)
        if self._previous and self._clock() - self._replaced_at >= self._overlap:
            self._previous = []
            changed = True
        return changed

    def pem(self) -> str:
        """The bundle as one PEM text: current certificates first."""
        return "\n".join([*self._current, *self._previous]) + "\n"


def _managed(config_map: Mapping[str, Any]) -> bool:
    labels: Mapping[str, str] = config_map.get("metadata", {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in MANAGED_BY.items())


def wants_ca(labels: Mapping[str, str]) -> bool:
    """Whether a namespace with these labels may get injected pods (the webhook's namespace selector)."""
    return labels.get(NAMESPACE_LABEL) == "enabled"


class CAPublisher:
    """Keeps ConfigMap `name` (key ca.crt) of every eligible namespace equal to the bundle."""

    def __init__(
        self,
        api: KubeAPI,
        bundle: CABundle,
        name: str,
        *,
        failures: Counter,
        pod: PodRef | None = None,
        may_write: Callable[[], bool] = lambda: True,
        poll: float = POLL_S,
        resync: float = RESYNC_S,
    ) -> None:
        self.name = name
        self._api = api
        self._bundle = bundle
        self._failures = failures
        self._pod = pod
        self._may_write = may_write
        self._poll = poll
        self._resync = resync
        self._namespaces: set[str] = set()
        self._dirty: set[str] = set()
        self._written: dict[str, str] = {}  # namespace -> the bundle last written there
        self._reported: set[str] = set()  # namespaces whose current run of failures has its Event
        self._wake = asyncio.Event()

    def namespace(self, namespace: str, labels: Mapping[str, str] | None) -> None:
        """A namespace appeared or changed (labels None: it was deleted)."""
        if labels is not None and wants_ca(labels):
            self.add(namespace)
        else:
            self._namespaces.discard(namespace)
            self._written.pop(namespace, None)
            self._reported.discard(namespace)

    def add(self, namespace: str) -> None:
        """Keep the CA in this namespace."""
        if namespace not in self._namespaces:
            self._namespaces.add(namespace)
            self._mark(namespace)

    def resume(self) -> None:
        """This replica leads again: rewrite every namespace (another leader may have written meanwhile)."""
        self._written.clear()
        for namespace in self._namespaces:
            self._mark(namespace)

    def _mark(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self._wake.set()

    async def run(self) -> None:
        """Poll the CA file and write what changed, while leading, until cancelled."""
        synced = time.monotonic()
        while True:
            await wait_event(self._wake, self._poll)
            self._wake.clear()
            if time.monotonic() - synced >= self._resync:
                synced = time.monotonic()
                self._written.clear()
                self._dirty |= self._namespaces
            if self._bundle.refresh():
                self._dirty |= self._namespaces
            batch, self._dirty = self._dirty & self._namespaces, set()
            for namespace in sorted(batch):
                if self._may_write():
                    await self._write(namespace)

    async def _write(self, namespace: str) -> None:
        pem = self._bundle.pem()
        if self._written.get(namespace) == pem:
            return
        collection = f"/api/v1/namespaces/{namespace}/configmaps"
        try:
            existing = await self._get(f"{collection}/{self.name}")
            if existing is None:
                await self._api.request("POST", collection, self._config_map(pem))
            elif not _managed(existing):
                await self._conflict(namespace)
                return
            else:
                patch = {"data": {CA_KEY: pem}}
                await self._api.request(
                    "PATCH", f"{collection}/{self.name}", patch, content_type="application/merge-patch+json"
                )
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:  # ValueError: not JSON
            await self._failed(namespace, exc)
            return
        self._written[namespace] = pem
        self._reported.discard(namespace)
        log.info("CA ConfigMap %s/%s written", namespace, self.name)

    async def _get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._api.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def _conflict(self, namespace: str) -> None:
        """Someone else's ConfigMap holds the name: leave it, say so once, look again later."""
        self._failures.labels("conflict").inc()
        self._retry(namespace, CONFLICT_RETRY_S)
        if namespace in self._reported:
            return
        self._reported.add(namespace)
        message = (
            f"ConfigMap {self.name} was not created by llmroute (no label app.kubernetes.io/managed-by=llmroute), so"
            " the operator does not overwrite it; sidecars in this namespace cannot verify the control plane until"
            " it is deleted or renamed"
        )
        log.warning("CA ConfigMap %s/%s belongs to someone else; not overwritten", namespace, self.name)
        involved = {"apiVersion": "v1", "kind": "ConfigMap", "name": self.name, "namespace": namespace}
        await post_event_about(self._api, involved, "CAConfigMapConflict", message)

    async def _failed(self, namespace: str, exc: Exception) -> None:
        """A write failed: count it, retry soon, and post one Event on the operator's Pod per run of failures."""
        self._failures.labels("error").inc()
        self._retry(namespace, RETRY_S)
        log.warning("CA ConfigMap %s/%s not written (%s); retrying", namespace, self.name, exc)
        if namespace in self._reported or self._pod is None:
            return
        self._reported.add(namespace)
        involved = {"apiVersion": "v1", "kind": "Pod", "name": self._pod.name, "namespace": self._pod.namespace}
        if self._pod.uid:
            involved["uid"] = self._pod.uid
        message = f"CA ConfigMap {namespace}/{self.name} not written ({exc}); retrying every {RETRY_S:.0f} s"
        await post_event_about(self._api, involved, "CAPublishFailed", message)

    def _retry(self, namespace: str, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, self._mark, namespace)

    def _config_map(self, pem: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": self.name, "labels": dict(MANAGED_BY)},
            "data": {CA_KEY: pem},
        }
