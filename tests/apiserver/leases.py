"""A test helper for Lease-based leader election against the real API server.

`Leases` reads and writes coordination.k8s.io/v1 Leases the way a leader elector must: every write is
a replace carrying the resourceVersion it read, so of two contenders that read the same version only
one write succeeds and the other gets 409 Conflict (`try_acquire` returns False). Tests of several
operator replicas can use it to watch who holds a lease, or to take it away from the leader.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException

CONFLICT = 409
NOT_FOUND = 404


@dataclass(frozen=True, slots=True)
class Lease:
    """What a Lease says, and the resourceVersion a write must carry to replace it."""

    holder: str | None
    duration_seconds: int | None
    renewed: datetime.datetime | None
    transitions: int
    resource_version: str


class Leases:
    """Leases of one namespace, through the official client with a kubeconfig's credentials."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.namespace = namespace
        self._client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self._api = kubernetes.client.CoordinationV1Api(self._client)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def get(self, name: str) -> Lease | None:
        """The Lease, or None when it does not exist."""
        try:
            return _lease(self._api.read_namespaced_lease(name, self.namespace))
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return None
            raise

    def try_acquire(self, name: str, holder: str, duration_seconds: int, seen: Lease | None) -> bool:
        """Take or renew the Lease as `holder`, based on the version `seen` (None: create it).

        False when someone else wrote it since (409 Conflict from the server), as a leader elector
        that lost the race must see it."""
        now = datetime.datetime.now(datetime.UTC)
        transitions = 0 if seen is None else seen.transitions + (seen.holder != holder)
        spec = kubernetes.client.V1LeaseSpec(
            holder_identity=holder,
            lease_duration_seconds=duration_seconds,
            acquire_time=now if seen is None or seen.holder != holder else None,
            renew_time=now,
            lease_transitions=transitions,
        )
        metadata: dict[str, Any] = {"name": name}
        if seen is not None:
            metadata["resourceVersion"] = seen.resource_version
        body = kubernetes.client.V1Lease(metadata=metadata, spec=spec)
        try:
            if seen is None:
                self._api.create_namespaced_lease(self.namespace, body)
            else:
                self._api.replace_namespaced_lease(name, self.namespace, body)
        except ApiException as exc:
            if exc.status == CONFLICT:
                return False
            raise
        return True


def _lease(obj: Any) -> Lease:
    spec = obj.spec
    return Lease(
        holder=spec.holder_identity,
        duration_seconds=spec.lease_duration_seconds,
        renewed=spec.renew_time,
        transitions=spec.lease_transitions or 0,
        resource_version=obj.metadata.resource_version,
    )
