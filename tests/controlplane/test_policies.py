"""Policies on the route stream (their own resource type) and quota grants on the load stream, over real gRPC."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc.aio

from llmroute.model.policy import Policy, QuotaKey
from llmroute.model.policy_parse import parse_policy_spec
from llmroute.operator.controlplane import ControlPlane, NackMessage, SidecarCounts
from llmroute.supervise import supervise
from llmroute.v1 import load_pb2, routes_pb2, rpc
from llmroute.v1.quota_keys import key_message

from .conftest import RawStream, eventually, make_route

HOURLY = QuotaKey("shop", "limits", "hourly", "usd")


def policy(limit_usd: float = 10.0, generation: int = 1, namespace: str = "shop") -> Policy:
    spec = {
        "tier": "growth",
        "budgets": [{"name": "hourly", "window": "1h", "limitUSD": limit_usd}],
        "rateLimits": [{"name": "rpm", "requestsPerMinute": 600}],
    }
    return parse_policy_spec(spec, name="limits", namespace=namespace, generation=generation)


async def subscribe(stream: RawStream, version: str = "") -> None:
    await stream.call.write(routes_pb2.RouteRequest(type_url=rpc.TYPE_POLICIES, version_info=version))


async def ack(stream: RawStream, response: routes_pb2.RouteResponse) -> None:
    await stream.call.write(
        routes_pb2.RouteRequest(
            type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce
        )
    )


async def test_policies_are_their_own_type_on_the_route_stream(plane: ControlPlane) -> None:
    plane.publish("shop", [make_route("shop", "chat")])
    plane.publish_policies("shop", [policy()])
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    table = await stream.response()
    assert table.type_url == "" and [r.name for r in table.table.routes] == ["chat"]  # older sidecars: unchanged
    await stream.ack(table)
    await stream.no_response()  # policies only once subscribed
    await subscribe(stream)
    policies = await stream.response()
    assert policies.type_url == rpc.TYPE_POLICIES
    [sent] = policies.policies.policies
    assert (sent.namespace, sent.name, sent.generation) == ("shop", "limits", 1)
    assert parse_policy_spec(json.loads(sent.spec_json), name="limits", namespace="shop", generation=1) == policy()
    assert plane.policy_sidecars("shop", "limits", 1) == SidecarCounts(1, 0, 0)
    await ack(stream, policies)
    await eventually(lambda: plane.policy_sidecars("shop", "limits", 1) == SidecarCounts(1, 1, 0))

    # A new generation is pushed on the policy type only, and its NACK is remembered for that type.
    plane.publish_policies("shop", [policy(limit_usd=20.0, generation=2)])
    pushed = await stream.response()
    assert pushed.type_url == rpc.TYPE_POLICIES and pushed.policies.policies[0].generation == 2
    await stream.call.write(
        routes_pb2.RouteRequest(
            type_url=rpc.TYPE_POLICIES,
            version_info=policies.version_info,
            response_nonce=pushed.nonce,
            error_detail="LLMPolicy shop/limits: cannot apply",
        )
    )
    await eventually(lambda: plane.policy_sidecars("shop", "limits", 2).rejected == 1)
    assert plane.policy_sidecars("shop", "limits", 2).messages == (
        NackMessage("shop/web-1", "LLMPolicy shop/limits: cannot apply"),
    )
    assert plane.route_sidecars("shop", "chat") == SidecarCounts(1, 1, 0)  # the routes are untouched
    await stream.close()


async def test_a_namespace_without_policies_gets_an_empty_set_once_synced(plane: ControlPlane) -> None:
    stream = await RawStream.open(plane.port, "token-shop", pod="web-1", namespace="shop")
    await subscribe(stream)
    await stream.no_response()  # neither routes nor policies are known yet: it waits
    plane.synced(["shop"])
    types = {(await stream.response()).type_url, (await stream.response()).type_url}
    assert types == {"", rpc.TYPE_POLICIES}
    await stream.close()


def hourly(directive: load_pb2.LoadDirective) -> float:
    return sum(g.granted for g in directive.grants if g.key.limit == "hourly")


class LoadStream:
    """A hand-driven StreamLoad call that reports quota usage and collects the directives."""

    def __init__(self, port: int, pod: str) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call: Any = rpc.stream_load(self.channel)(metadata=(("authorization", "Bearer token-shop"),))
        self.pod = pod
        self.directives: asyncio.Queue[load_pb2.LoadDirective] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.directives.put_nowait(message)

    async def report(self, *, demand: float, used: float = 0.0, version: int = 0, first: bool = False) -> None:
        window = int(time.time()) // 3600 * 3600
        usage = load_pb2.QuotaUsage(key=key_message(HOURLY), window_start=window, used=used, demand=demand)
        node = routes_pb2.Node(pod=self.pod, namespace="shop") if first else None
        await self.call.write(
            load_pb2.LoadReport(node=node, interval_seconds=0.5, quotas=[usage], grants_version=version)
        )

    async def grant(self) -> tuple[int, float]:
        """The next directive that carries grants: its version and the hourly grant."""
        while True:
            directive = await asyncio.wait_for(self.directives.get(), 5)
            if directive.grants_version:
                return directive.grants_version, hourly(directive)

    async def latest(self, version: int, granted: float) -> tuple[int, float]:
        """The newest grants sent within a moment, or those given when none came (nothing changed)."""
        await asyncio.sleep(0.3)
        while not self.directives.empty():
            directive = self.directives.get_nowait()
            if directive.grants_version:
                version, granted = directive.grants_version, hourly(directive)
        return version, granted

    async def close(self) -> None:
        self._reader.cancel()
        await self.channel.close(None)


async def test_grants_follow_demand_on_the_load_stream_and_never_exceed_the_limit(plane: ControlPlane) -> None:
    plane.publish_policies("shop", [policy(limit_usd=10.0)])
    allocator = supervise("quota allocator", plane.quotas.run, __import__("logging").getLogger(__name__))
    busy, quiet = LoadStream(plane.port, "busy"), LoadStream(plane.port, "quiet")
    try:
        await busy.report(demand=4.0, first=True)
        first = await asyncio.wait_for(busy.directives.get(), 5)
        assert first.report_interval_seconds == 0.5  # short where quotas apply
        version, granted = await busy.grant()
        assert 0 < granted <= 10.0
        await quiet.report(demand=0.1, first=True)
        quiet_version, quiet_granted = await quiet.grant()
        assert granted + quiet_granted <= 10.0 + 1e-9
        # The busy one keeps asking; it echoes what it applies, and its share grows toward the limit.
        for _ in range(6):
            await busy.report(demand=20.0, used=granted, version=version)
            await quiet.report(demand=0.0, version=quiet_version)
            version, granted = await busy.latest(version, granted)
        assert granted > 9.0
        assert granted + quiet_granted <= 10.0 + 1e-9
        figures = plane.quota_figures(HOURLY)
        assert figures is not None and figures.used > 0
    finally:
        allocator.cancel()
        await busy.close()
        await quiet.close()
