"""The sidecar's side of the policy protocol, against a small real gRPC server that speaks it: policies as
their own resource type on the route stream (ACK / NACK), grants on the load stream, usage and the
echoed grants version in load reports, and an early report when a request finds no share."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import openai
import pytest

from llmroute.model.policy import Window
from llmroute.sim import Behavior, Latency, SimProvider
from llmroute.v1 import load_pb2, routes_pb2, rpc

from .harness import chat_body, sidecar_running

FAST = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
MONTH = Window(31 * 86400, calendar_month=True)
BUDGET = load_pb2.QuotaKey(namespace="shop", policy="shop-limits", limit="monthly", quantity=load_pb2.USD)


def policy_response(version: str, nonce: str, limit: float) -> routes_pb2.RouteResponse:
    spec = {"tier": "growth", "budgets": [{"name": "monthly", "window": "31d", "limitUSD": limit, "action": "Reject"}]}
    policy = routes_pb2.Policy(namespace="shop", name="shop-limits", generation=1, spec_json=json.dumps(spec))
    return routes_pb2.RouteResponse(
        version_info=version, nonce=nonce, type_url=rpc.TYPE_POLICIES, policies=routes_pb2.PolicySet(policies=[policy])
    )


class PolicyPlane:
    """One namespace's control plane, reduced to the protocol: a fixed table, a policy set, grants sent when
    the test says so, and every request and report the sidecar sent."""

    def __init__(self, backend_url: str) -> None:
        spec = {
            "models": ["chat"],
            "backends": [
                {
                    "name": "dear",
                    "provider": "openai",
                    "url": backend_url,
                    "model": "dear-model",
                    "price": {"inputPerMTok": 0.0, "outputPerMTok": 1_000_000.0},
                }
            ],
        }
        route = routes_pb2.Route(namespace="shop", name="chat", generation=1, spec_json=json.dumps(spec))
        self.table = routes_pb2.RouteResponse(
            version_info="t1", nonce="1", table=routes_pb2.RoutingTable(routes=[route])
        )
        self.requests: asyncio.Queue[routes_pb2.RouteRequest] = asyncio.Queue()
        self.reports: asyncio.Queue[load_pb2.LoadReport] = asyncio.Queue()
        self.pushes: asyncio.Queue[routes_pb2.RouteResponse] = asyncio.Queue()
        self.directives: asyncio.Queue[load_pb2.LoadDirective] = asyncio.Queue()
        self.server = grpc.aio.server()
        rpc.add_services(self.server, self.stream_routes, self.stream_load)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def stream_routes(self, requests: AsyncIterator[routes_pb2.RouteRequest], context: Any) -> None:
        await anext(requests)  # the node's first request subscribes to the table
        await context.write(self.table)
        await _relay(requests, context, self.requests, self.pushes)

    async def stream_load(self, reports: AsyncIterator[load_pb2.LoadReport], context: Any) -> None:
        await context.write(load_pb2.LoadDirective(report_interval_seconds=30.0))  # only early reports come
        await _relay(reports, context, self.reports, self.directives)

    async def request(self, type_url: str) -> routes_pb2.RouteRequest:
        """The next request of this type the sidecar sent (others are dropped)."""
        while True:
            request = await asyncio.wait_for(self.requests.get(), 10)
            if request.type_url == type_url:
                return request

    async def report_with_quotas(self) -> load_pb2.LoadReport:
        """The next load report that says something about quotas."""
        while True:
            report = await asyncio.wait_for(self.reports.get(), 10)
            if report.quotas:
                return report


async def _relay(
    incoming: AsyncIterator[Any], context: Any, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]
) -> None:
    """Put what the sidecar sends in `inbox` and send it what the test puts in `outbox`, until it hangs up."""

    async def send() -> None:
        while True:
            await context.write(await outbox.get())

    sending = asyncio.create_task(send())
    try:
        async for message in incoming:
            inbox.put_nowait(message)
    finally:
        sending.cancel()


@contextlib.asynccontextmanager
async def plane_and_sidecar(tmp_path: Path, *extra: str) -> AsyncIterator[tuple[PolicyPlane, Any, SimProvider]]:
    sim = SimProvider("dear", "openai", FAST, seed=1)
    await sim.start()
    plane = PolicyPlane(sim.url)
    await plane.server.start()
    argv = ["--control-plane", f"127.0.0.1:{plane.port}", "--plaintext", "--namespace", "shop", "--pod-name", "web-1"]
    argv += ["--token-file", str(tmp_path / "no-token"), "--labels", "app=web", *extra]
    try:
        async with sidecar_running(argv) as sidecar:
            yield plane, sidecar, sim
    finally:
        await plane.server.stop(0)
        await sim.stop()


async def test_policies_are_acked_enforced_on_granted_shares_and_usage_is_reported(tmp_path: Path) -> None:
    async with plane_and_sidecar(tmp_path) as (plane, sidecar, sim):
        subscribe = await plane.request(rpc.TYPE_POLICIES)
        assert (subscribe.version_info, subscribe.response_nonce) == ("", "")  # a subscription, nothing held yet
        plane.pushes.put_nowait(policy_response("p1", "n1", limit=100.0))
        ack = await plane.request(rpc.TYPE_POLICIES)
        assert (ack.version_info, ack.response_nonce, ack.error_detail) == ("p1", "n1", "")

        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sidecar.app_server.port}/v1", api_key="unused", max_retries=0
        )
        try:
            # No share granted yet: refused at once, with a short Retry-After, and the demand goes up early.
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(**chat_body(max_tokens=4))
            assert refused.value.response.headers["retry-after"] == "1"
            early = await plane.report_with_quotas()  # the interval is 30 s: only an early report comes this soon
            [usage] = early.quotas
            assert usage.key == BUDGET and usage.demand == pytest.approx(4.0) and usage.rejected == 1
            assert (usage.granted, early.grants_version) == (0.0, 0)

            now = time.time()
            grant = load_pb2.QuotaGrant(
                key=BUDGET, window_start=int(MONTH.start(now)), window_end=int(MONTH.end(now)), granted=8.0
            )
            plane.directives.put_nowait(load_pb2.LoadDirective(grants=[grant], grants_version=7))
            for _ in range(500):
                if sidecar.ledger.grants_version == 7:
                    break
                await asyncio.sleep(0.01)
            for _ in range(2):  # $4 each within the $8 share
                await client.chat.completions.create(**chat_body(max_tokens=4))
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(**chat_body(max_tokens=4))
            assert sim.stats.requests == 2

            report = await plane.report_with_quotas()  # the refusal asked for an early report
            [usage] = report.quotas
            assert report.grants_version == 7
            assert (usage.used, usage.reserved, usage.granted) == (pytest.approx(8.0), 0.0, 8.0)
            assert usage.window_start == int(MONTH.start(now))
        finally:
            await client.close()


async def test_a_policy_set_that_does_not_validate_is_nacked_and_the_last_stays(tmp_path: Path) -> None:
    async with plane_and_sidecar(tmp_path) as (plane, sidecar, _):
        await plane.request(rpc.TYPE_POLICIES)
        plane.pushes.put_nowait(policy_response("p1", "n1", limit=100.0))
        await plane.request(rpc.TYPE_POLICIES)
        plane.pushes.put_nowait(policy_response("p2", "n2", limit=-5.0))
        nack = await plane.request(rpc.TYPE_POLICIES)
        assert (nack.version_info, nack.response_nonce) == ("p1", "n2")
        assert "LLMPolicy shop/shop-limits" in nack.error_detail and "limitUSD" in nack.error_detail
        [limit] = sidecar.admission.limits
        assert limit.quota.limit == 100.0
        assert sidecar.control_plane.policy_version == "p1"


async def test_a_sidecar_restarted_without_the_operator_enforces_its_saved_policies_on_no_grant(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    async with plane_and_sidecar(tmp_path, "--state-dir", str(state_dir)) as (plane, _, _):
        await plane.request(rpc.TYPE_POLICIES)
        plane.pushes.put_nowait(policy_response("p1", "n1", limit=100.0))
        await plane.request(rpc.TYPE_POLICIES)
    # The operator is gone (nothing listens on its port any more); the sidecar restarts from its state.
    argv = ["--control-plane", f"127.0.0.1:{plane.port}", "--plaintext", "--namespace", "shop", "--pod-name", "web-1"]
    argv += ["--token-file", str(tmp_path / "no-token"), "--state-dir", str(state_dir)]
    async with sidecar_running(argv) as sidecar:
        for _ in range(500):
            if sidecar.router.ready and sidecar.admission.active:
                break
            await asyncio.sleep(0.01)
        assert sidecar.control_plane.policy_version == "p1"
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{sidecar.app_server.port}/v1", api_key="unused", max_retries=0
        )
        try:
            with pytest.raises(openai.RateLimitError) as refused:  # it holds no grant: it spends nothing
                await client.chat.completions.create(**chat_body(max_tokens=4))
            assert refused.value.code == "budget_exceeded"
        finally:
            await client.close()
