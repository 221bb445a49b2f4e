"""The sidecar's control-plane client against a real ControlPlane: apply, ACK/NACK, reconnects, state dir."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from llmroute.model import RoutingTable, table_version
from llmroute.operator.controlplane import ControlPlane, SidecarCounts
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.routes.controlplane import ControlPlaneClient, NodeInfo

from .conftest import PlaneFactory, eventually, make_route


class Sidecar:
    """A ControlPlaneClient with what a sidecar would do with its tables: keep the last one applied."""

    def __init__(self, address: str, token_file: Path, state_dir: Path | None, pod: str = "web-1") -> None:
        self.applied: list[RoutingTable] = []
        self.load = LoadRecorder()
        self.client = ControlPlaneClient(
            address,
            NodeInfo(pod=pod, namespace="shop", labels={"app": "storefront"}, sidecar_version="test"),
            token_file=token_file,
            state_dir=state_dir,
            tls_ca=None,
            plaintext=True,
            apply=self.applied.append,
            load=self.load,
            backoff_min=0.05,
            backoff_max=0.2,
        )
        self.task = asyncio.create_task(self.client.run())

    @property
    def table(self) -> RoutingTable | None:
        return self.applied[-1] if self.applied else None


def write_token(path: Path, token: str) -> None:
    path.write_text(token + "\n")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    write_token(path, "token-shop")
    return path


@pytest.fixture
async def sidecars(token_file: Path) -> AsyncIterator[Callable[..., Sidecar]]:
    made: list[Sidecar] = []

    def make(address: str, state_dir: Path | None = None, pod: str = "web-1") -> Sidecar:
        sidecar = Sidecar(address, token_file, state_dir, pod)
        made.append(sidecar)
        return sidecar

    yield make
    for s in made:
        await s.client.stop()
        await s.task


async def test_applies_and_acks_tables_with_keys(plane: ControlPlane, sidecars: Callable[..., Sidecar]) -> None:
    routes = [make_route("shop", "chat", key="sk-1", generation=4)]
    plane.publish("shop", routes)
    sidecar = sidecars(f"127.0.0.1:{plane.port}")
    await eventually(lambda: plane.route_sidecars("shop", "chat") == SidecarCounts(1, 1, 0))
    assert sidecar.table is not None
    assert sidecar.table.version == table_version(routes) == sidecar.client.version
    route = sidecar.table.by_model["chat"]
    assert route.generation == 4
    assert route.backends[0].api_key is not None and route.backends[0].api_key.reveal() == "sk-1"


async def test_unappliable_table_is_nacked_and_the_old_one_kept(
    plane: ControlPlane, sidecars: Callable[..., Sidecar], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LLMROUTE_TEST_MISSING_KEY", raising=False)
    plane.publish("shop", [make_route("shop", "chat")])
    sidecar = sidecars(f"127.0.0.1:{plane.port}")
    await eventually(lambda: plane.route_sidecars("shop", "chat").programmed == 1)
    good = sidecar.table
    plane.publish("shop", [make_route("shop", "chat", generation=2, env_key="LLMROUTE_TEST_MISSING_KEY")])
    await eventually(lambda: plane.route_sidecars("shop", "chat").rejected == 1)
    [nack] = plane.route_sidecars("shop", "chat").messages
    assert nack.pod == "web-1"
    assert "spec.backends[0].apiKeyEnv: environment variable LLMROUTE_TEST_MISSING_KEY is not set" in nack.message
    assert sidecar.applied == [good]
    assert sidecar.client.version == good.version if good else False


async def test_keeps_serving_while_the_operator_is_away_and_resubscribes(
    make_plane: PlaneFactory, sidecars: Callable[..., Sidecar]
) -> None:
    plane = await make_plane()
    port = plane.port
    routes = [make_route("shop", "chat")]
    plane.publish("shop", routes)
    sidecar = sidecars(f"127.0.0.1:{port}")
    await eventually(lambda: sidecar.client.connected and sidecar.table is not None)
    await plane.stop(0)
    await eventually(lambda: not sidecar.client.connected)
    await asyncio.sleep(0.3)  # several failed reconnects
    assert [t.version for t in sidecar.applied] == [table_version(routes)]

    # The operator comes back with the same routes: the sidecar resubscribes, nothing is resent.
    registry = CollectorRegistry()
    back = await make_plane(f"127.0.0.1:{port}", registry=registry)
    back.publish("shop", routes)
    await eventually(lambda: back.route_sidecars("shop", "chat") == SidecarCounts(1, 1, 0))
    assert registry.get_sample_value("llmroute_pushes_total") == 0
    # ... and a change made meanwhile reaches it.
    changed = [make_route("shop", "chat", generation=2, url="https://v2.example/v1")]
    back.publish("shop", changed)
    await eventually(lambda: sidecar.client.version == table_version(changed))
    assert len(sidecar.applied) == 2


async def test_restarts_from_state_dir_without_a_control_plane(
    plane: ControlPlane, sidecars: Callable[..., Sidecar], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    routes = [make_route("shop", "chat", key="sk-secret")]
    plane.publish("shop", routes)
    first = sidecars(f"127.0.0.1:{plane.port}", state_dir)
    await eventually(lambda: plane.route_sidecars("shop", "chat").programmed == 1)
    await first.client.stop()
    saved = next(state_dir.iterdir())
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600

    await plane.stop(0)
    restarted = sidecars(f"127.0.0.1:{plane.port}", state_dir)  # nobody listens there any more
    await eventually(lambda: restarted.table is not None, within=1.0)
    assert restarted.table is not None and restarted.table.version == table_version(routes)
    key = restarted.table.by_model["chat"].backends[0].api_key
    assert key is not None and key.reveal() == "sk-secret"
    assert not restarted.client.connected


async def test_rereads_a_rotated_token_on_reconnect(
    plane: ControlPlane, sidecars: Callable[..., Sidecar], token_file: Path
) -> None:
    write_token(token_file, "expired-token")
    plane.publish("shop", [make_route("shop", "chat")])
    sidecar = sidecars(f"127.0.0.1:{plane.port}")
    await asyncio.sleep(0.3)
    assert sidecar.table is None and not sidecar.client.connected
    write_token(token_file, "token-shop")  # the kubelet rotated the projected token
    await eventually(lambda: sidecar.table is not None)


def merged(plane: ControlPlane) -> bool:
    return plane.backend_health("shop", "chat")[0].error_rate == 0.02


async def test_load_reports_of_two_sidecars_are_merged(plane: ControlPlane, sidecars: Callable[..., Sidecar]) -> None:
    plane.publish("shop", [make_route("shop", "chat")])
    fast = sidecars(f"127.0.0.1:{plane.port}", pod="web-1")
    slow = sidecars(f"127.0.0.1:{plane.port}", pod="web-2")
    for _ in range(90):
        fast.load.start("chat", "primary")
        fast.load.finish(
            "chat", "primary", failure=None, latency=0.040, ttft=0.020, tokens_in=10, tokens_out=5, cost_usd=0.001
        )
    for i in range(10):
        slow.load.start("chat", "primary")
        slow.load.finish(
            "chat",
            "primary",
            failure="5xx" if i < 2 else None,
            latency=0.9,
            ttft=None,
            tokens_in=0,
            tokens_out=0,
            cost_usd=0.0,
        )
    slow.load.start("chat", "primary")  # still in flight: not counted as a request
    # The two reports arrive in either order; merged, 2 of the 100 finished requests failed.
    await eventually(lambda: bool(plane.backend_health("shop", "chat")) and merged(plane))
    [health] = plane.backend_health("shop", "chat")
    assert health.name == "primary" and health.healthy
    assert 25 < health.latency_p50_ms <= 50  # 90 of 100 at 40 ms, on web-1
    assert 750 < health.latency_p95_ms <= 1000  # 10 of 100 at 900 ms, on web-2
    assert 10 < health.ttft_p95_ms <= 25
    assert health.error_rate == 0.02
    assert health.requests_per_minute > 100
    assert health.spend_usd_per_hour > 0
