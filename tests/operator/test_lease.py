"""Leader election on the emulated API server (resourceVersions and 409 Conflicts as a real one gives):
one leader at a time, a take-over when the leader goes silent, and a leader cut off from the API server
stops leading before anyone else starts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import kopf
import pytest

from llmroute.operator.kubeapi import KubeAPI
from llmroute.operator.lease import LeaderElection
from tests.ports import free_port

if TYPE_CHECKING:
    from conftest import Bench

LEASE = "/apis/coordination.k8s.io/v1/namespaces/default/leases/test"


class Elector:
    """A LeaderElection with its own API client and task, and a log of when it led."""

    def __init__(self, name: str, url: str, duration: float = 1.5) -> None:
        self.api = KubeAPI(timeout=1.0)
        self.url = url
        self.election = LeaderElection(
            self.api,
            "default",
            "test",
            name,
            lease_duration=duration,
            renew_deadline=duration * 2 / 3,
            retry_period=0.2,
        )
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        info = kopf.ConnectionInfo(server=self.url)
        self.api.connect(info, lambda: info)
        self.task = asyncio.create_task(self.election.run())

    def cut_off(self) -> None:
        """From now on its API server is unreachable (a network partition)."""
        info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{free_port()}")
        self.api.connect(info, lambda: info)

    async def halt(self) -> None:
        """Stop electing (the Lease stays as it was last written)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def stop(self) -> None:
        await self.halt()
        await self.api.close()


@pytest.fixture
async def electors(cluster: Bench) -> AsyncIterator[list[Elector]]:
    made = [Elector(name, cluster.url) for name in ("a", "b", "c")]
    try:
        yield made
    finally:
        for elector in made:
            await elector.stop()


async def _sample(electors: list[Elector], seconds: float) -> list[tuple[bool, ...]]:
    """Who leads, every 10 ms for `seconds`."""
    samples = []
    for _ in range(int(seconds / 0.01)):
        samples.append(tuple(e.election.leading for e in electors))
        await asyncio.sleep(0.01)
    return samples


async def test_racing_replicas_elect_exactly_one_leader(cluster: Bench, electors: list[Elector]) -> None:
    for elector in electors:
        elector.start()  # all at once: their first writes race, and the API server turns the losers away
    samples = await _sample(electors, 2.0)
    assert all(sum(s) <= 1 for s in samples), "two replicas led at the same time"
    assert sum(samples[-1]) == 1, "nobody leads"
    lease = await cluster.kube.call("GET", LEASE)
    leader = next(e for e in electors if e.election.leading)
    assert lease["spec"]["holderIdentity"] == leader.election.identity
    assert lease["metadata"]["resourceVersion"]


async def test_a_partitioned_leader_stops_before_another_takes_over(cluster: Bench, electors: list[Elector]) -> None:
    first, second = electors[:2]
    first.start()
    await cluster.eventually(lambda: _true(first.election.leading), what="the first replica to lead")
    second.start()
    await asyncio.sleep(0.5)
    assert not second.election.leading
    first.cut_off()  # it can no longer renew, and cannot tell anyone
    samples = await _sample([first, second], 4.0)
    assert all(sum(s) <= 1 for s in samples), "the cut-off leader still led when the other took over"
    assert samples[-1] == (False, True)
    lease = await cluster.kube.call("GET", LEASE)
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1


async def test_a_released_lease_is_taken_over_without_waiting_out_its_duration(cluster: Bench) -> None:
    # As on SIGTERM: the leader gives the Lease up, so another replica takes over long before the
    # 60 s it would otherwise wait.
    first, second = Elector("a", cluster.url, duration=60.0), Elector("b", cluster.url, duration=60.0)
    try:
        first.start()
        await cluster.eventually(lambda: _true(first.election.leading), what="the first replica to lead")
        second.start()
        await asyncio.sleep(0.5)
        assert not second.election.leading
        await first.halt()
        await first.election.release()
        assert not first.election.leading
        await cluster.eventually(lambda: _true(second.election.leading), within=20.0, what="the take-over")
    finally:
        await first.stop()
        await second.stop()


async def _true(value: bool) -> bool:
    return value
