"""Status from load reports, metrics on the admin port, and an operator restart that resends nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from .conftest import RECONNECT_GRACE_S

if TYPE_CHECKING:
    from conftest import Bench, StubSidecar


async def _status(bench: Bench, check: Any) -> dict[str, Any] | None:
    route = await bench.kube.get_route("shop", "support")
    status = (route or {}).get("status") or {}
    return status if check(status) else None


async def test_status_shows_backend_health_from_load_reports(bench: Bench) -> None:
    first = await bench.sidecar("shop", "storefront-0")
    second = await bench.sidecar("shop", "storefront-1")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _status(bench, lambda s: s.get("sidecars", {}).get("programmed") == 2))

    await first.report_load("support", "primary", requests=30, latency_ms=180, spend=0.03)
    await second.report_load("support", "primary", requests=10, latency_ms=900, spend=0.01)

    status = await bench.eventually(
        lambda: _status(bench, lambda s: s.get("backends") and s["backends"][0]["requestsPerMinute"] > 0),
        what="backend health in the status",
    )
    [backend] = status["backends"]
    assert backend["name"] == "primary"
    assert backend["healthy"] is True
    assert backend["errorRate"] == 0
    assert 150 <= backend["latencyP50Ms"] <= 200  # 30 of 40 requests took 180 ms
    assert 750 <= backend["latencyP95Ms"] <= 1000  # the slow sidecar's share
    assert backend["spendUSDPerHour"] > 0


async def test_metrics_and_health_endpoints(bench: Bench) -> None:
    await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.kube.apply_route("shop", "broken", bench.spec(["chat"]))  # loses the model to the older route

    async def exported() -> str | None:
        text = await bench.metrics()
        return text if 'llmroute_routes{namespace="shop",state="rejected"} 1.0' in text else None

    text = await bench.eventually(exported, what="route states in /metrics")
    assert 'llmroute_routes{namespace="shop",state="serving"} 1.0' in text
    assert "llmroute_reconciles_total" in text
    assert "llmroute_reconcile_errors_total 0.0" in text
    assert "llmroute_connected_sidecars 1.0" in text
    assert "llmroute_config_convergence_seconds_count" in text
    async with bench.kube.session.get(f"http://127.0.0.1:{bench.operator.admin_port}/healthz") as response:
        assert response.status == 200


async def _restart_under_a_connected_sidecar(bench: Bench) -> StubSidecar:
    """Program a sidecar, restart the operator, reconnect the sidecar with the version it has."""
    await bench.start_operator()
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _status(bench, lambda s: s.get("sidecars", {}).get("programmed") == 1))
    await bench.stop_operator()
    await sidecar.stop()
    await bench.start_operator()
    assert bench.operator is not None
    sidecar.port = bench.operator.grpc_port
    await sidecar.start(sidecar.version)
    await asyncio.sleep(1.0)  # reconcile, push debounce and status interval, several times over
    return sidecar


async def test_a_restarted_operator_does_not_resend_an_unchanged_table(cluster: Bench) -> None:
    sidecar = await _restart_under_a_connected_sidecar(cluster)
    assert len(sidecar.received) == 1, "the unchanged table was sent again"
    assert sidecar.closed is None


def _programmed(status: dict[str, Any]) -> tuple[str, str]:
    condition = next((c for c in status.get("conditions", ()) if c["type"] == "Programmed"), {})
    return condition.get("status", ""), condition.get("reason", "")


async def test_a_restarted_operator_waits_for_sidecars_before_saying_there_are_none(cluster: Bench) -> None:
    # A restart of the operator is no outage: while sidecars may still be reconnecting, a route with none
    # connected reads Programmed=Unknown (Reconnecting), and only after the grace period False (NoSidecars).
    await cluster.start_operator()
    sidecar = await cluster.sidecar("shop", "storefront-0")
    await cluster.kube.apply_route("shop", "support", cluster.spec(["chat"]))
    await cluster.eventually(lambda: _status(cluster, lambda s: _programmed(s) == ("True", "AllSidecarsAcked")))
    await cluster.stop_operator()
    await sidecar.stop()  # and it does not come back
    restarted = asyncio.get_running_loop().time()
    await cluster.start_operator()
    status = await cluster.eventually(
        lambda: _status(cluster, lambda s: _programmed(s) == ("Unknown", "Reconnecting")), what="Reconnecting"
    )
    assert status is not None and status["sidecars"]["connected"] == 0
    await cluster.eventually(
        lambda: _status(cluster, lambda s: _programmed(s) == ("False", "NoSidecars")), what="NoSidecars"
    )
    assert asyncio.get_running_loop().time() - restarted >= RECONNECT_GRACE_S


async def test_a_restarted_operator_counts_the_reconnected_sidecar_as_programmed(cluster: Bench) -> None:
    # The sidecar comes back with the version it already runs: nothing is sent, and it counts as
    # programmed. (Between the restart and the reconnect the status says the sidecars are reconnecting.)
    await _restart_under_a_connected_sidecar(cluster)
    status = await _status(cluster, lambda s: s.get("sidecars", {}).get("programmed") == 1)
    assert status is not None and status["sidecars"] == {"connected": 1, "programmed": 1, "rejected": 0}
    programmed = next(c for c in status["conditions"] if c["type"] == "Programmed")
    assert programmed["status"] == "True"
