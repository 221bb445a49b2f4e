"""What one sidecar gets: the namespace's routes its labels select, their version and wire form.

Sidecars with the same selection share one Snapshot, so a push to a thousand pods builds it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llmroute.model import Route, route_spec, table_version
from llmroute.v1 import routes_pb2


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One routing table as sent: its version, message and the generation of each route in it."""

    version: str
    table: routes_pb2.RoutingTable
    generations: Mapping[str, int]
    encoded: bytes = b""  # RouteResponse{version_info, table} serialized: each push appends only its nonce

    def response(self, nonce: str) -> bytes:
        """The serialized RouteResponse for one push. Protobuf merges concatenated messages, so the table is
        serialized once per snapshot rather than once per sidecar (the bulk of a push's CPU at thousands)."""
        return self.encoded + routes_pb2.RouteResponse(nonce=nonce).SerializeToString()


def route_message(route: Route) -> routes_pb2.Route:
    """The wire form of an accepted route: canonical spec JSON plus the keys and CA bundles of its Secret-backed
    backends."""
    return routes_pb2.Route(
        namespace=route.namespace,
        name=route.name,
        generation=route.generation,
        spec_json=json.dumps(route_spec(route), sort_keys=True, separators=(",", ":")),
        api_keys={
            b.name: b.api_key.reveal()
            for b in route.backends
            if b.api_key_secret_ref is not None and b.api_key is not None
        },
        ca_bundles={b.name: b.ca_bundle.reveal() for b in route.backends if b.ca_bundle is not None},
    )


class Snapshots:
    """Snapshots of one set of published routes, built on first use per distinct selection."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(sorted(routes, key=lambda r: r.name))
        self._by_selection: dict[tuple[int, ...], Snapshot] = {}
        self._by_labels: dict[frozenset[tuple[str, str]], Snapshot] = {}

    def for_labels(self, labels: Mapping[str, str]) -> Snapshot:
        """The table of a pod with these labels (pods of one workload share labels: looked up once)."""
        key = frozenset(labels.items())
        snapshot = self._by_labels.get(key)
        if snapshot is None:
            snapshot = self._by_labels[key] = self._select(dict(labels))
        return snapshot

    def whole(self) -> Snapshot:
        """The table of every route (the namespace's bootstrap copy; each sidecar keeps what selects it)."""
        return self._snapshot(tuple(range(len(self.routes))))

    def _select(self, labels: dict[str, str]) -> Snapshot:
        return self._snapshot(tuple(i for i, r in enumerate(self.routes) if r.selects(labels)))

    def _snapshot(self, selection: tuple[int, ...]) -> Snapshot:
        snapshot = self._by_selection.get(selection)
        if snapshot is None:
            chosen = [self.routes[i] for i in selection]
            version = table_version(chosen)
            table = routes_pb2.RoutingTable(routes=[route_message(r) for r in chosen])
            snapshot = Snapshot(
                version=version,
                table=table,
                generations={r.name: r.generation for r in chosen},
                encoded=routes_pb2.RouteResponse(version_info=version, table=table).SerializeToString(
                    deterministic=True
                ),
            )
            self._by_selection[selection] = snapshot
        return snapshot
