"""What the API server guarantees a Lease-based leader elector (see tests/apiserver/leases.py): of two
contenders that read the same Lease, exactly one write wins; the loser sees a conflict, not a silent
overwrite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.apiserver.harness import ApiServer, unique
from tests.apiserver.leases import Leases


@pytest.fixture
def leases(apiserver: ApiServer) -> Iterator[Leases]:
    client = Leases(apiserver.kubeconfig, apiserver.create_namespace(unique("lease")))
    try:
        yield client
    finally:
        client.close()


def test_only_one_of_two_creators_gets_a_new_lease(leases: Leases) -> None:
    assert leases.try_acquire("operator", "replica-a", 15, None)
    assert not leases.try_acquire("operator", "replica-b", 15, None)
    lease = leases.get("operator")
    assert lease is not None and lease.holder == "replica-a"


def test_a_write_based_on_a_stale_version_conflicts(leases: Leases) -> None:
    assert leases.try_acquire("operator", "replica-a", 15, None)
    seen = leases.get("operator")
    assert seen is not None
    # Both replicas read the same version; the leader renews first, so the other's takeover conflicts.
    assert leases.try_acquire("operator", "replica-a", 15, seen)
    assert not leases.try_acquire("operator", "replica-b", 15, seen)
    after = leases.get("operator")
    assert after is not None and after.holder == "replica-a" and after.transitions == 0
    assert after.resource_version != seen.resource_version
    # Based on what is there now, a takeover goes through and counts as a transition.
    assert leases.try_acquire("operator", "replica-b", 15, after)
    taken = leases.get("operator")
    assert taken is not None and taken.holder == "replica-b" and taken.transitions == 1
