"""Each namespace's last good table, kept in a Secret there, for pods that start while no replica answers.

A new pod's sidecar has an empty state dir, so without a replica it would have no routes and stay
unready. The injection webhook mounts this Secret (optional) into every sidecar; the kubelet delivers
it without the operator, and the sidecar serves from it until a replica answers. It holds the keys
its routes need, like the Secrets they come from, in the same namespace. Only the leader writes it.

It is also where a replica that starts learns each route's last good form: a route whose current
generation is rejected keeps serving its last good one, which only the replicas that saw it
remember. Seeded from here, a new replica publishes the same table as the others.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiohttp

from llmroute.model import Route, parse_spec, resolve_keys
from llmroute.v1 import routes_pb2
from llmroute.v1.sent import sent_secrets

from .controlplane import ControlPlane
from .kubeapi import KubeAPI, KubeError
from .reconcile import LastGood
from .tables import Snapshots

log = logging.getLogger(__name__)

BOOTSTRAP_SECRET = "llmroute-bootstrap"
BOOTSTRAP_KEY = "routes.pb"
UIDS_KEY = "uids.json"  # route name -> uid of the LLMRoute each published form belongs to
RETRY_S = 5.0


def bootstrap_table(routes: Sequence[Route]) -> bytes:
    """The namespace's whole table as a serialized RouteResponse (each sidecar keeps the routes selecting it)."""
    return Snapshots(routes).whole().encoded


class BootstrapWriter:
    """Keeps Secret llmroute-bootstrap of every namespace with routes equal to what this replica publishes."""

    def __init__(
        self,
        api: KubeAPI,
        plane: ControlPlane,
        uids: Callable[[str], Mapping[str, str]],
        *,
        may_write: Callable[[], bool] = lambda: True,
    ) -> None:
        self._api = api
        self._plane = plane
        self._uids = uids
        self._may_write = may_write
        self._dirty: set[str] = set()
        self._written: dict[str, dict[str, str]] = {}  # namespace -> the data last written
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
                    try:
                        await self._write(namespace)
                    except Exception:
                        self._dirty |= {n for n in batch if n >= namespace}  # a crash loses no write
                        self._wake.set()
                        raise

    async def _write(self, namespace: str) -> None:
        routes = self._plane.published().get(namespace)
        if routes is None:
            return
        data = {
            BOOTSTRAP_KEY: base64.b64encode(bootstrap_table(routes)).decode(),
            UIDS_KEY: base64.b64encode(json.dumps(dict(self._uids(namespace)), sort_keys=True).encode()).decode(),
        }
        if self._written.get(namespace) == data:
            return
        path = f"/api/v1/namespaces/{namespace}/secrets"
        try:
            await self._api.patch_or_create(
                path, BOOTSTRAP_SECRET, {"data": data}, self._secret(data) if routes else None
            )
        except (KubeError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("bootstrap table of namespace %s not written (%s); retrying", namespace, exc)
            asyncio.get_running_loop().call_later(RETRY_S, self.mark, namespace)
            return
        self._written[namespace] = data

    async def last_good(self, namespace: str) -> dict[str, LastGood]:
        """The last good form of each route, as the leader last wrote them here ({} when none can be read)."""
        try:
            data = await self._api.get_secret_data(namespace, BOOTSTRAP_SECRET)
            return read_last_good(data or {})
        except Exception as exc:  # a damaged copy only costs the seed: the replica starts without it
            log.warning(
                "cannot read the last good routes of namespace %s from its bootstrap Secret: %s", namespace, exc
            )
            return {}

    @staticmethod
    def _secret(data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": BOOTSTRAP_SECRET, "labels": {"app.kubernetes.io/managed-by": "llmroute"}},
            "data": data,
        }


def read_last_good(data: Mapping[str, str]) -> dict[str, LastGood]:
    """The routes of a bootstrap Secret's data as LastGood entries (keys as they were sent)."""
    if BOOTSTRAP_KEY not in data or UIDS_KEY not in data:
        return {}
    response = routes_pb2.RouteResponse.FromString(base64.b64decode(data[BOOTSTRAP_KEY]))
    uids = json.loads(base64.b64decode(data[UIDS_KEY]))
    out = {}
    for message in response.table.routes:
        if message.name not in uids:
            continue
        parsed = parse_spec(
            json.loads(message.spec_json), name=message.name, namespace=message.namespace, generation=message.generation
        )
        out[message.name] = LastGood(uids[message.name], parsed, resolve_keys(parsed, *sent_secrets(message)))
    return out
