"""The server side of StreamRoutes, driven message by message over real gRPC on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
from prometheus_client import CollectorRegistry

from llmroute.model import table_version
from llmroute.operator.controlplane import ControlPlane, NackMessage, SidecarCounts

from .conftest import PlaneFactory, RawStream, eventually, make_route


async def test_first_response_is_immediate_and_carries_the_pods_table(make_plane: PlaneFactory) -> None:
    # A debounce far longer than any scheduling delay of a loaded machine, so "not debounced" is plain to see.
    plane = await make_plane(debounce=8.0, max_delay=10.0)
    routes = [make_route("shop", "chat", key="sk-shop-1"), make_route("shop", "embed", models=("embed",))]
    plane.publish("shop", routes[:1])
    plane.publish("shop", routes)  # a change: its push to open streams waits for the 8 s debounce
    started = time.monotonic()
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    response = await stream.response(within=6.0)
    assert time.monotonic() - started < 4.0  # a new stream gets the latest table at once, not after the debounce
    assert response.version_info == table_version(routes)
    assert [r.name for r in response.table.routes] == ["chat", "embed"]
    chat = response.table.routes[0]
    assert (chat.namespace, chat.generation) == ("shop", 1)
    assert dict(chat.api_keys) == {"primary": "sk-shop-1"}
    assert json.loads(chat.spec_json)["backends"][0]["apiKeySecretRef"] == {"name": "llm-keys", "key": "openai"}
    await stream.close()


async def test_a_stream_waits_for_the_namespaces_first_publish(plane: ControlPlane) -> None:
    # After an operator restart, a sidecar must not be told "no routes" before the namespace is compiled.
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    await stream.no_response()
    plane.publish("shop", [make_route("shop", "chat")])
    assert [r.name for r in (await stream.response(within=0.5)).table.routes] == ["chat"]
    await stream.close()


async def test_ack_makes_the_route_programmed_and_reports_the_change(plane: ControlPlane) -> None:
    changes: list[str] = []
    plane.on_change = changes.append
    plane.publish("shop", [make_route("shop", "chat", generation=3)])
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    response = await stream.response()
    await eventually(lambda: plane.route_sidecars("shop", "chat") == SidecarCounts(1, 0, 0))
    changes.clear()
    await stream.ack(response)
    await eventually(lambda: plane.route_sidecars("shop", "chat") == SidecarCounts(1, 1, 0))
    assert changes == ["shop"]
    await stream.close()
    await eventually(lambda: plane.route_sidecars("shop", "chat") == SidecarCounts(0, 0, 0))


async def test_nacked_version_is_reported_and_never_resent_to_that_pod(
    plane: ControlPlane, registry: CollectorRegistry
) -> None:
    good = [make_route("shop", "chat", generation=1)]
    bad = [make_route("shop", "chat", generation=2, url="https://v2.example.com/v1")]
    plane.publish("shop", good)
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    first = await stream.response()
    await stream.ack(first)
    plane.publish("shop", bad)
    pushed = await stream.response()
    await stream.nack(pushed, first.version_info, "LLMRoute shop/chat is invalid: spec.backends[0].url: unsupported")
    await eventually(lambda: plane.route_sidecars("shop", "chat").rejected == 1)
    assert plane.route_sidecars("shop", "chat") == SidecarCounts(
        1, 0, 1, (NackMessage("web-1", "LLMRoute shop/chat is invalid: spec.backends[0].url: unsupported"),)
    )
    assert registry.get_sample_value("llmroute_nacks_total") == 1
    await stream.close()

    # The same pod reconnects with its last good version: the rejected one is not sent again ...
    again = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop", version=first.version_info)
    await again.no_response()
    assert plane.route_sidecars("shop", "chat").rejected == 1
    # ... while another pod gets it, and a newer version reaches the first pod again.
    other = await RawStream.open(plane.port, "token-shop", pod="web-2", namespace="shop")
    assert (await other.response()).version_info == pushed.version_info
    fixed = [make_route("shop", "chat", generation=3, url="https://v3.example.com/v1")]
    plane.publish("shop", fixed)
    assert (await again.response()).version_info == table_version(fixed)
    await again.close()
    await other.close()


async def test_reconnect_with_the_current_version_gets_nothing(
    plane: ControlPlane, registry: CollectorRegistry
) -> None:
    routes = [make_route("shop", "chat")]
    plane.publish("shop", routes)
    await asyncio.sleep(0.05)
    stream = await RawStream.open(
        plane.port, "token-shop", pod="web-1", namespace="shop", version=table_version(routes)
    )
    await stream.no_response()
    assert registry.get_sample_value("llmroute_pushes_total") in (None, 0)
    assert plane.route_sidecars("shop", "chat") == SidecarCounts(1, 1, 0)
    # Publishing the same routes again is not a change either.
    plane.publish("shop", [make_route("shop", "chat")])
    await stream.no_response()
    await stream.close()


async def test_namespaces_are_isolated_by_token(plane: ControlPlane) -> None:
    plane.publish("shop", [make_route("shop", "chat", key="sk-shop")])
    plane.publish("bank", [make_route("bank", "ledger-chat", key="sk-bank")])
    shop = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    bank = await RawStream.open(plane.port, "token-bank", pod="ledger-1", namespace="bank")
    shop_table = (await shop.response()).table
    bank_table = (await bank.response()).table
    assert [(r.namespace, r.name, dict(r.api_keys)) for r in shop_table.routes] == [
        ("shop", "chat", {"primary": "sk-shop"})
    ]
    assert [(r.namespace, r.name, dict(r.api_keys)) for r in bank_table.routes] == [
        ("bank", "ledger-chat", {"primary": "sk-bank"})
    ]

    # A shop pod claiming to be in bank is refused and receives nothing.
    liar = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="bank")
    assert await liar.status() == grpc.StatusCode.PERMISSION_DENIED
    assert liar.received.empty()
    stranger = await RawStream.open(plane.port, "not-a-token", pod="x", namespace="bank")
    assert await stranger.status() == grpc.StatusCode.UNAUTHENTICATED
    assert stranger.received.empty()
    assert plane.route_sidecars("bank", "ledger-chat").connected == 1
    for s in (shop, bank, liar, stranger):
        await s.close()


async def test_workload_selector_picks_the_routes_per_pod(plane: ControlPlane) -> None:
    plane.publish(
        "shop",
        [
            make_route("shop", "everyone"),
            make_route("shop", "storefront", models=("sf",), selector={"app": "storefront"}),
        ],
    )
    storefront = await RawStream.open(
        plane.port, "token-shop", pod="sf-1", namespace="shop", labels={"app": "storefront"}
    )
    worker = await RawStream.open(plane.port, "token-shop", pod="worker-1", namespace="shop", labels={"app": "worker"})
    assert [r.name for r in (await storefront.response()).table.routes] == ["everyone", "storefront"]
    assert [r.name for r in (await worker.response()).table.routes] == ["everyone"]
    assert plane.route_sidecars("shop", "storefront").connected == 1
    assert plane.route_sidecars("shop", "everyone").connected == 2
    await storefront.close()
    await worker.close()


async def test_a_burst_of_publishes_is_one_push(plane: ControlPlane) -> None:
    plane.publish("shop", [make_route("shop", "chat")])
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    await stream.ack(await stream.response())
    for generation in range(2, 12):
        plane.publish(
            "shop", [make_route("shop", "chat", generation=generation, url=f"https://v{generation}.example/v1")]
        )
        await asyncio.sleep(0.01)
    last = await stream.response()
    assert json.loads(last.table.routes[0].spec_json)["backends"][0]["url"] == "https://v11.example/v1"
    await stream.no_response()
    await stream.close()


async def test_debounce_is_bounded_under_constant_change(make_plane: PlaneFactory) -> None:
    cp = await make_plane(debounce=0.1, max_delay=0.3)
    cp.publish("shop", [make_route("shop", "chat")])
    stream = await RawStream.open(cp.port, "token-shop", pod="web-1", namespace="shop")
    await stream.ack(await stream.response())
    started = time.monotonic()
    generation = 1
    while stream.received.empty() and time.monotonic() - started < 2:
        generation += 1
        cp.publish("shop", [make_route("shop", "chat", generation=generation, url=f"https://v{generation}.example/v1")])
        await asyncio.sleep(0.03)  # faster than the debounce: only max_delay lets a push through
    assert 0.25 < time.monotonic() - started < 0.6
    assert not stream.received.empty()
    await stream.close()


async def test_convergence_is_observed_when_every_pod_acked(plane: ControlPlane, registry: CollectorRegistry) -> None:
    plane.publish("shop", [make_route("shop", "chat")])
    a = await RawStream.open(plane.port, "token-shop", pod="a", namespace="shop")
    b = await RawStream.open(plane.port, "token-shop", pod="b", namespace="shop")
    await a.ack(await a.response())
    await b.ack(await b.response())
    plane.publish("shop", [make_route("shop", "chat", generation=2, url="https://v2.example/v1")])
    await a.ack(await a.response())
    second = await b.response()
    await asyncio.sleep(0.1)
    assert registry.get_sample_value("llmroute_config_convergence_seconds_count") in (None, 0)
    await b.ack(second)
    await eventually(lambda: registry.get_sample_value("llmroute_config_convergence_seconds_count") == 1)
    total = registry.get_sample_value("llmroute_config_convergence_seconds_sum")
    assert total is not None and 0.1 <= total < 1.0  # includes the debounce and b's delay
    assert registry.get_sample_value("llmroute_connected_sidecars") == 2
    await a.close()
    await b.close()
