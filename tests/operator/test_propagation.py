"""LLMRoute create / update / delete reach a sidecar over real gRPC through kopf, kmock and the control plane."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Bench, StubSidecar


async def test_create_update_delete_reach_the_sidecar(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")

    started = time.monotonic()
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _has(sidecar, "support"), what="the new route at the sidecar")
    created = time.monotonic() - started

    started = time.monotonic()
    await bench.kube.apply_route("shop", "support", bench.spec(["chat", "summarize"], backend="secondary"))
    await bench.eventually(lambda: _models(sidecar, "support", ["chat", "summarize"]), what="the updated route")
    updated = time.monotonic() - started
    assert json.loads(sidecar.table()["support"].spec_json)["backends"][0]["name"] == "secondary"
    assert sidecar.table()["support"].generation == 2

    started = time.monotonic()
    await bench.kube.delete_route("shop", "support")
    await bench.eventually(lambda: _gone(sidecar, "support"), what="the route gone from the sidecar")
    deleted = time.monotonic() - started
    print(
        f"\npropagation kubectl-equivalent write -> sidecar table: create {created * 1000:.0f} ms, "
        f"update {updated * 1000:.0f} ms, delete {deleted * 1000:.0f} ms"
    )
    assert max(created, updated, deleted) < 2.0


async def test_status_reports_programmed_sidecars(bench: Bench) -> None:
    await bench.sidecar("shop", "storefront-0")
    await bench.sidecar("shop", "storefront-1")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))

    async def programmed() -> dict[str, Any] | None:
        route = await bench.kube.get_route("shop", "support")
        return route if bench.condition(route, "Programmed").get("status") == "True" else None

    route = await bench.eventually(programmed, what="Programmed=True")
    status = route["status"]
    assert status["observedGeneration"] == 1
    assert status["sidecars"] == {"connected": 2, "programmed": 2, "rejected": 0}
    assert bench.condition(route, "Accepted")["reason"] == "Valid"
    assert bench.condition(route, "ResolvedRefs")["reason"] == "SecretsFound"
    assert bench.condition(route, "Programmed")["reason"] == "AllSidecarsAcked"
    assert status["version"]


async def _has(sidecar: StubSidecar, name: str) -> bool:
    return name in sidecar.table()


async def _models(sidecar: StubSidecar, name: str, models: list[str]) -> bool:
    route = sidecar.table().get(name)
    return route is not None and json.loads(route.spec_json)["models"] == models


async def _gone(sidecar: StubSidecar, name: str) -> bool:
    return bool(sidecar.received) and name not in sidecar.table()
