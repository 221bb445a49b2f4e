"""The leader's picture of the fleet: two real control planes, each serving its share at /fleet on its peer port
over real HTTP, stub sidecars over real gRPC on each; the leader's merge counts every sidecar and report once."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry

from llmroute.model import parse_document
from llmroute.model.policy import Budget, Policy, QuotaKey, Window
from llmroute.operator.admin import AdminServer
from llmroute.operator.auth import InsecureAuthenticator
from llmroute.operator.controlplane import ControlPlane
from llmroute.operator.fleet import FleetView
from llmroute.operator.peerport import PeerServer
from llmroute.v1 import load_pb2, rpc
from llmroute.v1.quota_keys import key_message

from .conftest import StubSidecar, eventually

ROUTE = {
    "apiVersion": "llmroute.io/v1alpha1",
    "kind": "LLMRoute",
    "metadata": {"name": "chat", "namespace": "shop", "generation": 1},
    "spec": {"models": ["chat"], "backends": [{"name": "b", "provider": "openai", "url": "http://x/v1", "model": "m"}]},
}

KEY = QuotaKey("shop", "limits", "hourly", "usd")
POLICY = Policy("shop", "limits", budgets=(Budget("hourly", Window(3600), 20.0),))


@dataclass
class Member:
    """One replica: its control plane, its fleet view and the peer port that serves its share (plaintext)."""

    plane: ControlPlane
    fleet: FleetView
    admin: PeerServer


@pytest.fixture
async def members() -> AsyncIterator[list[Member]]:
    made = []
    for name in ("a", "b"):
        plane = ControlPlane(authenticator=InsecureAuthenticator(), registry=CollectorRegistry())
        await plane.start("127.0.0.1:0")
        plane.publish("shop", [parse_document(ROUTE)])
        fleet = FleetView(plane, f"replica-{name}", interval=0.05)
        admin = PeerServer(fleet.share, {"127.0.0.1"}, CollectorRegistry())
        await admin.start("127.0.0.1", 0)
        made.append(Member(plane, fleet, admin))
    yield made
    for member in made:
        await member.admin.stop()
        await member.plane.stop(0)


async def report(sidecar: StubSidecar, *, requests: int, server_errors: int) -> None:
    """One load report of the sidecar: `requests` attempts at backend b, `server_errors` of them 5xx."""
    assert sidecar._channel is not None
    load = load_pb2.BackendLoad(
        route="chat", backend="b", requests=requests, successes=requests - server_errors,
        failures=load_pb2.Failures(server_error=server_errors),
    )  # fmt: skip
    call = rpc.stream_load(sidecar._channel)(metadata=sidecar.metadata)
    await call.write(load_pb2.LoadReport(node=sidecar.node, interval_seconds=5.0, backends=[load]))
    await call.read()
    await call.done_writing()


async def test_the_leader_counts_every_replicas_sidecars_and_reports_once(members: list[Member]) -> None:
    leader, other = members
    # The peers address lists both replicas, the leader itself included (a headless Service does).
    leader.fleet.peers = tuple(("127.0.0.1", m.admin.port) for m in members)
    on_leader = StubSidecar(leader.plane.port, "shop", "pod-0", "t")
    on_other = [StubSidecar(other.plane.port, "shop", f"pod-{i}", "t") for i in (1, 2)]
    for stub in (on_leader, *on_other):
        await stub.start()
    await report(on_leader, requests=10, server_errors=10)
    await report(on_other[0], requests=30, server_errors=0)
    changed: list[str] = []
    leader.fleet.on_change = changed.append
    polling = asyncio.create_task(leader.fleet.run(lambda: True))
    try:
        counts = await eventually(lambda: _connected(leader.fleet, 3), what="the merged count")
        assert (counts.programmed, counts.rejected) == (3, 0)
        [health] = leader.fleet.backend_health("shop", "chat")
        # 10 failed on one replica, 30 succeeded on the other: counted twice or missed, it would not be 1/4.
        assert health.error_rate == 0.25
        assert "shop" in changed
        # A replica that stops answering stops counting: its sidecars count again where they reconnect.
        await other.admin.stop()
        await eventually(lambda: _connected(leader.fleet, 1), what="the other replica's share dropped")
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        for stub in (on_leader, *on_other):
            await stub.stop()


async def _connected(fleet: FleetView, expected: int) -> object:
    counts = fleet.route_sidecars("shop", "chat")
    return counts if counts.connected == expected else None


async def test_a_new_leader_grants_only_once_every_replica_answered_it_with_its_reports(members: list[Member]) -> None:
    leader, other = members
    leader.fleet.peers = tuple(("127.0.0.1", m.admin.port) for m in members)
    holder = ["replica-gone"]  # the other replica has not read the new holder in the Lease yet
    other.fleet.holder = lambda: holder[0]
    on_other = StubSidecar(other.plane.port, "shop", "pod-1", "t")
    await on_other.start()
    polling = asyncio.create_task(leader.fleet.run(lambda: True))
    try:
        await eventually(lambda: _connected(leader.fleet, 1), what="the other replica's share merged")
        assert not leader.fleet.granting()  # it answered, but without the reports that say what it holds
        holder[0] = "replica-a"
        await eventually(lambda: _async(leader.fleet.granting()), what="the leader granting")
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        await on_other.stop()


async def test_a_replica_that_never_answers_is_waited_for_only_the_grace(members: list[Member]) -> None:
    leader, _ = members

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the connection, never answers (a replica stuck, or cut off mid-way)
        writer.close()

    stuck = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = stuck.sockets[0].getsockname()[1]
    leader.fleet.peers = (("127.0.0.1", leader.admin.port), ("127.0.0.1", port))
    leader.fleet.timeout, leader.fleet.grace = 0.2, 1.5
    polling = asyncio.create_task(leader.fleet.run(lambda: True))
    started = time.monotonic()
    try:
        await eventually(lambda: _async(leader.fleet.granting()), what="the leader granting after the grace")
        assert time.monotonic() - started >= 1.5  # it was waited for, unlike a replica of the previous release
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        stuck.close()


async def _async(value: bool) -> bool | None:
    return value or None


async def poll_until_granting(fleet: FleetView) -> None:
    """Run the leader's poll until it grants for the fleet (every replica answered it with its reports)."""
    polling = asyncio.create_task(fleet.run(lambda: True))
    try:
        await eventually(lambda: _async(fleet.granting()), what="the leader granting")
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)


async def test_a_replica_that_takes_over_inherits_the_last_leaders_ledger(members: list[Member]) -> None:
    leader, other = members
    leader.fleet.peers = tuple(("127.0.0.1", m.admin.port) for m in members)
    other.fleet.holder = lambda: "replica-a"
    for member in members:
        member.plane.quotas.set_policies("shop", [POLICY])
    # A sidecar of the leader's that holds 5 USD of the budget and has used 3.
    window = int(Window(3600).start(time.time()))
    usage = load_pb2.QuotaUsage(key=key_message(KEY), window_start=window, used=3.0, granted=5.0)
    leader.plane.quotas.report("shop/pod-0", load_pb2.LoadReport(interval_seconds=0.5, quotas=[usage]))
    # Granting: the other replica took its POST as the Lease holder's (grants, reports and the ledger).
    await poll_until_granting(leader.fleet)
    assert other.plane.quotas.ledger() == {}  # a follower only keeps it
    # The leader is gone; the other replica leads: the sidecar, not connected to it, counts what it held.
    taking_over = asyncio.create_task(other.fleet.run(lambda: True))
    try:
        held = await eventually(lambda: _async(other.plane.quotas.ledger()), what="the ledger inherited")
    finally:
        taking_over.cancel()
        await asyncio.gather(taking_over, return_exceptions=True)
    assert held == {"shop/pod-0": [[["shop", "limits", "hourly", "usd"], window, 5.0]]}


@pytest.mark.parametrize("previous", ["no peer port", "405"])
async def test_a_replica_of_the_previous_release_keeps_its_static_share_out_of_the_grants(
    members: list[Member], previous: str
) -> None:
    leader, other = members
    # The previous release's replica: nothing on the peer port (its address still resolves), or, where --peers
    # names its admin port, an answer 405 to the POST (this release's admin port answers a POST just so).
    if previous == "405":
        old = AdminServer(CollectorRegistry(), lambda: True, other.fleet.share)
        await old.start("127.0.0.1", 0)
        old_port = old.port
    else:
        await other.admin.stop()
        old_port = other.admin.port
    leader.fleet.peers = (("127.0.0.1", leader.admin.port), ("127.0.0.1", old_port))
    leader.fleet.grace = 3600.0  # it is not waited for: it never takes part
    leader.fleet.previous_share = 1 / 2  # it grants its own sidecars half of every limit
    leader.plane.quotas.set_policies("shop", [POLICY])
    # A sidecar of the leader's that asks for more than the whole limit (16 USD/s, in requests of 8 USD).
    window = int(Window(3600).start(time.time()))
    usage = load_pb2.QuotaUsage(key=key_message(KEY), window_start=window, demand=8.0)
    leader.plane.quotas.report("shop/pod-0", load_pb2.LoadReport(interval_seconds=0.5, quotas=[usage]))
    polling = asyncio.create_task(leader.fleet.run(lambda: True))
    try:
        await eventually(lambda: _async(leader.fleet.granting()), what="the leader granting")
        grants = leader.plane.quotas.allocator.allocate(time.time())
    finally:
        polling.cancel()
        await asyncio.gather(polling, return_exceptions=True)
        if previous == "405":
            await old.stop()
    [granted] = [g.granted for g in grants["shop/pod-0"] if g.window_start == window]
    assert granted == pytest.approx(10.0)  # the other half of 20 is the old replica's to grant
    assert "previous-release" not in json.dumps(leader.plane.quotas.ledger())  # never handed on as a sidecar


async def test_the_leaders_quota_figures_add_the_other_replicas_and_keep_its_own_largest_piece(
    members: list[Member],
) -> None:
    leader, other = members
    leader.fleet.peers = tuple(("127.0.0.1", m.admin.port) for m in members)
    other.fleet.holder = lambda: "replica-a"
    other.plane.quotas.granting = other.fleet.granting  # as the operator wires it: only the leader grants
    window = int(Window(3600).start(time.time()))
    for pod, member, used, granted, rejected, ask in (
        ("pod-0", leader, 3.5, 4.0, 2, 1.0),
        ("pod-1", other, 3.0, 3.5, 1, 0.5),
    ):
        member.plane.quotas.set_policies("shop", [POLICY])
        usage = load_pb2.QuotaUsage(
            key=key_message(KEY), window_start=window, used=used, granted=granted, rejected=rejected, smallest_ask=ask
        )
        member.plane.quotas.report(f"shop/{pod}", load_pb2.LoadReport(interval_seconds=0.5, quotas=[usage]))
    other.plane.quotas.allocate()  # its figures, as its allocation loop records them
    own = other.plane.quota_figures(KEY)
    assert own is not None and own.largest_piece is None  # it does not know the fleet's grants
    await poll_until_granting(leader.fleet)
    leader.plane.quotas.allocate()
    merged = leader.fleet.quota_figures(KEY)
    assert merged is not None
    assert (merged.used, merged.rejected, merged.smallest_ask) == (6.5, 3, 0.5)
    # The largest piece is what nobody holds: 20 - 4 (the leader's sidecar) - 3.5 (the other's, relayed).
    assert merged.largest_piece == pytest.approx(12.5)
