"""Several operator replicas as real processes, with real sidecars: every replica serves the same
tables, one leader writes status counting every sidecar once, and killing the leader or another
replica fails no request while the sidecars move."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmroute.sim import SimProvider
from llmroute.v1 import routes_pb2

from .conftest import StubSidecar
from .replicas import LEASE, LEASE_DURATION_S, Fleet, Replica, Sidecar, Traffic

if TYPE_CHECKING:
    from conftest import Bench


def route_spec(sim: SimProvider, models: list[str]) -> dict[str, Any]:
    backend = {
        "name": "sim", "provider": "openai", "url": sim.url, "model": "m",
        "apiKeySecretRef": {"name": "llm-keys", "key": "sim"},
    }  # fmt: skip
    return {"models": models, "workloadSelector": {"matchLabels": {"app": "shop"}}, "backends": [backend]}


async def publish_route(cluster: Bench, sim: SimProvider, models: list[str]) -> None:
    await cluster.kube.put_secret("shop", "llm-keys", {"sim": "sk-test"})
    await cluster.kube.apply_route("shop", "chat", route_spec(sim, models))


def token(cluster: Bench, pod: str) -> str:
    value = f"token-shop-{pod}"
    cluster.cluster.tokens[value] = "system:serviceaccount:shop:default"
    return value


async def leader(cluster: Bench, replicas: Fleet) -> Replica | None:
    """The replica named in the Lease (None while nobody holds it)."""
    try:
        lease = await cluster.kube.call("GET", LEASE)
    except AssertionError:
        return None
    holder = lease["spec"].get("holderIdentity") or ""
    return next((r for r in replicas.replicas if holder.startswith(f"{r.name}-")), None)


async def sidecar_status(cluster: Bench) -> dict[str, Any] | None:
    route = await cluster.kube.get_route("shop", "chat")
    return ((route or {}).get("status") or {}).get("sidecars")


async def metric(replicas: Fleet, replica: Replica, name: str) -> float | None:
    """One unlabelled series of the replica's /metrics."""
    async with replicas.session.get(f"http://127.0.0.1:{replica.admin}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def table_from(cluster: Bench, replica: Replica) -> bytes:
    """The table the replica sends a pod labelled app=shop (a stub sidecar subscribes once)."""
    stub = StubSidecar(replica.grpc, "shop", f"probe-{replica.name}", token(cluster, "probe"), {"app": "shop"})
    await stub.start()
    try:
        await cluster.eventually(lambda: _async(bool(stub.received)), what=f"a table from {replica.name}")
        return stub.received[0][1].SerializeToString(deterministic=True)
    finally:
        await stub.stop()


class StatusWatch:
    """Samples the route's status.sidecars.connected until stopped: the most it ever said."""

    def __init__(self, cluster: Bench) -> None:
        self.cluster = cluster
        self.most = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.most = max(self.most, int((await sidecar_status(self.cluster) or {}).get("connected", 0)))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def test_three_replicas_serve_identical_tables_and_the_leader_counts_every_sidecar_once(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    three = replicas.add_replicas(3)
    for replica in three:
        await replicas.start(replica)
    await publish_route(cluster, sim, ["chat"])
    # Each replica compiles the namespace itself: the tables, keys included, are the same bytes.
    tables = [await table_from(cluster, replica) for replica in three]
    assert tables[0] == tables[1] == tables[2] and b"sk-test" in tables[0]
    # A sidecar on each replica; the leader's status counts the three of them, once each.
    for replica in three:
        (pod,) = replicas.pods_for(replica, 1)
        await replicas.sidecar(pod, token(cluster, pod))
    for replica in three:
        await replicas.until(lambda r=replica: _is(replicas.connected(r, "chat"), 1), f"one sidecar on {replica.name}")
    expected = {"connected": 3, "programmed": 3, "rejected": 0}
    await cluster.eventually(lambda: _is(sidecar_status(cluster), expected), within=30, what="status of 3 sidecars")
    assert await leader(cluster, replicas) in three


async def leader_and_follower(
    cluster: Bench, replicas: Fleet, sim: SimProvider, on_leader: int, on_follower: int
) -> tuple[Replica, Replica, list[Sidecar]]:
    """Two replicas, the first the leader, and real sidecars: `on_leader` dial it first, `on_follower` the other."""
    first, second = replicas.add_replicas(2)
    await replicas.start(first)
    await replicas.until(lambda: _is(leader(cluster, replicas), first), "the first replica to lead")
    await replicas.start(second)
    await publish_route(cluster, sim, ["chat"])
    pods = replicas.pods_for(first, on_leader) + replicas.pods_for(second, on_follower)
    sidecars = [await replicas.sidecar(pod, token(cluster, pod)) for pod in pods]
    await replicas.until(lambda: _is(replicas.connected(second, "chat"), on_follower), "sidecars on the follower")
    return first, second, sidecars


async def test_the_leader_killed_under_load(cluster: Bench, replicas: Fleet, sim: SimProvider) -> None:
    first, second, sidecars = await leader_and_follower(cluster, replicas, sim, on_leader=2, on_follower=1)
    expected = {"connected": 3, "programmed": 3, "rejected": 0}
    await cluster.eventually(lambda: _is(sidecar_status(cluster), expected), within=30, what="status of 3 sidecars")
    traffic, watch = Traffic(sidecars), StatusWatch(cluster)
    traffic.start()
    await asyncio.sleep(0.5)
    assert first.process is not None
    first.process.kill()
    # Its two sidecars move to the other replica, which takes the Lease over once it runs out.
    await replicas.until(lambda: _is(replicas.connected(second, "chat"), 3), "the sidecars to move")
    await replicas.until(lambda: _is(leader(cluster, replicas), second), "the take-over", within=10 * LEASE_DURATION_S)
    await replicas.until(lambda: _is(metric(replicas, second, "llmroute_leader"), 1.0), "llmroute_leader 1")
    # The new leader writes status: a change made now shows as programmed on all three sidecars.
    await publish_route(cluster, sim, ["chat", "chat-v2"])
    route = await cluster.eventually(
        lambda: _generation_programmed(cluster, 2), within=10 * LEASE_DURATION_S, what="status of the new generation"
    )
    assert route["status"]["sidecars"] == expected
    await asyncio.sleep(1.0)  # a little more traffic on the new leader
    await traffic.stop()
    await watch.stop()
    assert traffic.failed == [] and traffic.ok > 0
    assert watch.most == 3, "the status counted a sidecar twice"


async def test_a_replica_killed_its_sidecars_move_without_a_resend(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    first, second, sidecars = await leader_and_follower(cluster, replicas, sim, on_leader=1, on_follower=2)
    sent_before = await metric(replicas, first, "llmroute_pushes_total")
    traffic = Traffic(sidecars)
    traffic.start()
    await asyncio.sleep(0.5)
    assert second.process is not None
    second.process.kill()
    await replicas.until(lambda: _is(replicas.connected(first, "chat"), 3), "the sidecars to move")
    expected = {"connected": 3, "programmed": 3, "rejected": 0}
    await cluster.eventually(lambda: _is(sidecar_status(cluster), expected), within=30, what="status of 3 sidecars")
    await asyncio.sleep(0.5)
    await traffic.stop()
    assert traffic.failed == [] and traffic.ok > 0
    # They came with the version the replica has: nothing was sent to them.
    assert await metric(replicas, first, "llmroute_pushes_total") == sent_before
    assert await leader(cluster, replicas) is first
    assert await metric(replicas, first, "llmroute_leader") == 1.0


async def _generation_programmed(cluster: Bench, generation: int) -> dict[str, Any] | None:
    route = await cluster.kube.get_route("shop", "chat")
    status = (route or {}).get("status") or {}
    programmed = next((c for c in status.get("conditions", []) if c["type"] == "Programmed"), {})
    if programmed.get("status") == "True" and programmed.get("observedGeneration") == generation:
        return route
    return None


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _async(value: bool) -> bool:
    return value


async def test_a_new_sidecar_serves_from_the_bootstrap_copy_while_every_replica_is_down(
    cluster: Bench, replicas: Fleet, sim: SimProvider, tmp_path: Path
) -> None:
    (only,) = replicas.add_replicas(1)
    await replicas.start(only)
    await publish_route(cluster, sim, ["chat"])
    other = {**route_spec(sim, ["other"]), "workloadSelector": {"matchLabels": {"app": "blog"}}}
    await cluster.kube.apply_route("shop", "other", other)
    # The leader keeps the namespace's table in a Secret there; the kubelet would mount it into new pods.
    secret = await cluster.eventually(lambda: _bootstrap_with(cluster, 2), within=30, what="the bootstrap Secret")
    mounted = tmp_path / "bootstrap" / "routes.pb"
    mounted.parent.mkdir()
    mounted.write_bytes(base64.b64decode(secret["data"]["routes.pb"]))
    assert only.process is not None
    only.process.kill()
    await only.process.proc.wait()
    # No replica answers, yet the new sidecar becomes ready and serves its routes (only those selecting it).
    sidecar = await replicas.sidecar("fresh-0", token(cluster, "fresh-0"), ("--bootstrap-file", str(mounted)))
    assert await replicas.chat(sidecar, "chat") == 200
    assert await replicas.chat(sidecar, "other") != 200
    # A change made meanwhile reaches it through the live stream as soon as a replica answers again.
    await publish_route(cluster, sim, ["chat", "chat-v2"])
    await replicas.start(only)
    await replicas.until(lambda: _is(replicas.chat(sidecar, "chat-v2"), 200), "the live table")


async def _bootstrap_with(cluster: Bench, routes: int) -> dict[str, Any] | None:
    """Secret llmroute-bootstrap of namespace shop, once its table has `routes` routes."""
    try:
        secret = await cluster.kube.call("GET", "/api/v1/namespaces/shop/secrets/llmroute-bootstrap")
    except AssertionError:
        return None
    table = routes_pb2.RouteResponse.FromString(base64.b64decode(secret["data"]["routes.pb"]))
    return secret if len(table.table.routes) == routes else None


async def test_a_replica_started_after_a_rejected_change_serves_the_same_last_good_table(
    cluster: Bench, replicas: Fleet, sim: SimProvider
) -> None:
    first, second = replicas.add_replicas(2)
    await replicas.start(first)
    await replicas.until(lambda: _is(leader(cluster, replicas), first), "the first replica to lead")
    await publish_route(cluster, sim, ["chat"])
    await cluster.eventually(lambda: _bootstrap_with(cluster, 1), within=30, what="the bootstrap Secret")
    # Generation 2 is invalid: the route keeps serving generation 1, which only the first replica saw.
    await cluster.kube.apply_route("shop", "chat", {**route_spec(sim, ["chat"]), "backends": []})
    await cluster.eventually(lambda: _rejected(cluster, 2), within=30, what="generation 2 rejected")
    await replicas.start(second)
    before, after = await table_from(cluster, first), await table_from(cluster, second)
    assert after == before
    [served] = routes_pb2.RouteResponse.FromString(after).table.routes
    assert served.name == "chat" and served.generation == 1


async def _rejected(cluster: Bench, generation: int) -> bool:
    route = await cluster.kube.get_route("shop", "chat")
    conditions = ((route or {}).get("status") or {}).get("conditions", [])
    accepted = next((c for c in conditions if c["type"] == "Accepted"), {})
    return accepted.get("status") == "False" and accepted.get("observedGeneration") == generation
