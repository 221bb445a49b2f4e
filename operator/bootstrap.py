"""Each namespace's last good table, kept in a Secret there, for pods that start while no replica answers.

A new pod's sidecar has an empty state dir, so without a replica it would have no routes and stay
unready. The injection webhook mounts this Secret (optional) into every sidecar; the kubelet delivers
it without the operator, and the sidecar serves from it until a replica answers. It holds the keys
its routes need, like the Secrets they come from, in the same namespace. Only the leader writes it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from llmroute.model import Route

from .controlplane import ControlPlane
from .kubeapi import KubeAPI, KubeError
from .tables import Snapshots

log = logging.getLogger(__name__)

BOOTSTRAP_SECRET = "llmroute-bootstrap"
BOOTSTRAP_KEY = "routes.pb"
RETRY_S = 5.0


def bootstrap_table(routes: Sequence[Route]) -> bytes:
    """The namespace's whole table as a serialized RouteResponse (each sidecar keeps the routes selecting it)."""
    return Snapshots(routes).whole().encoded


class BootstrapWriter:
    """Keeps Secret llmroute-bootstrap of every namespace with routes equal to what this replica publishes."""

    def __init__(self, api: KubeAPI, plane: ControlPlane, *, may_write: Callable[[], bool] = lambda: True) -> None:
        self._api = api
        self._plane = plane
        self._may_write = may_write
        self._dirty: set[str] = set()
        self._written: dict[str, str] = {}  # namespace -> base64 data last written
        self._wake = asyncio.Event()

    def mark(self, namespace: str) -> None:
        """The namespace's published table may have changed."""
        self._dirty.add(namespace)
        self._wake.set()

    def resume(self) -> None:
        """This replica leads again: rewrite every namespace (another leader may have written meanwhile)."""
        self._written.clear()
        for namespace in self._plane.published():
            self.mark(namespace)

    async def run(self) -> None:
        """Write marked namespaces while leading, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            for namespace in sorted(batch):
                if self._may_write():
                    await self._write(namespace)

    async def _write(self, namespace: str) -> None:
        routes = self._plane.published().get(namespace)
        if routes is None:
            return
        data = base64.b64encode(bootstrap_table(routes)).decode()
        if self._written.get(namespace) == data:
            return
        path = f"/api/v1/namespaces/{namespace}/secrets"
        try:
            try:
                await self._api.request(
                    "PATCH",
                    f"{path}/{BOOTSTRAP_SECRET}",
                    {"data": {BOOTSTRAP_KEY: data}},
                    content_type="application/merge-patch+json",
                )
            except KubeError as exc:
                if exc.status != 404:
                    raise
                if routes:
                    await self._api.request("POST", path, self._secret(data))
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("bootstrap table of namespace %s not written (%s); retrying", namespace, exc)
            asyncio.get_running_loop().call_later(RETRY_S, self.mark, namespace)
            return
        self._written[namespace] = data

    @staticmethod
    def _secret(data: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": BOOTSTRAP_SECRET, "labels": {"app.kubernetes.io/managed-by": "llmroute"}},
            "data": {BOOTSTRAP_KEY: data},
        }
