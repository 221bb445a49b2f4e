"""A real sidecar under the real control plane with an LLMPolicy: it subscribes to the policies, is granted a
share on the load stream, enforces it, and its spend reaches the operator's figures."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import openai

from llmroute.model import parse_document
from llmroute.model.policy import QuotaKey
from llmroute.model.policy_parse import parse_policy_spec
from llmroute.operator.controlplane import ControlPlane
from llmroute.sim import Behavior, Latency, SimProvider
from llmroute.supervise import supervise
from tests.sidecar.harness import chat_body, sidecar_running

from .conftest import eventually

MONTHLY = QuotaKey("shop", "limits", "monthly", "usd")


async def test_a_sidecar_enforces_the_share_it_is_granted_and_reports_its_spend(
    plane: ControlPlane, tmp_path: Path
) -> None:
    sim = SimProvider("dear", "openai", Behavior(latency=Latency.fixed(0.01), output_tokens=4), seed=1)
    await sim.start()
    token = tmp_path / "token"
    token.write_text("token-shop")
    backend = {
        "name": "dear",
        "provider": "openai",
        "url": sim.url,
        "model": "dear-model",
        "price": {"inputPerMTok": 0.0, "outputPerMTok": 1_000_000.0},  # $4 a request of 4 output tokens
    }
    route = {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": "chat", "namespace": "shop", "generation": 1},
        "spec": {"models": ["chat"], "backends": [backend]},
    }
    plane.publish("shop", [parse_document(route)])
    budget = {"name": "monthly", "window": "31d", "limitUSD": 10, "action": "Reject"}
    plane.publish_policies("shop", [parse_policy_spec({"budgets": [budget]}, name="limits", namespace="shop")])
    allocator = supervise("quota allocator", plane.quotas.run, logging.getLogger(__name__))
    argv = ["--control-plane", f"127.0.0.1:{plane.port}", "--plaintext", "--namespace", "shop", "--pod-name", "web-1"]
    argv += ["--token-file", str(token)]
    try:
        async with sidecar_running(argv) as sidecar:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{sidecar.app_server.port}/v1", api_key="unused", max_retries=0
            )
            try:
                await eventually(lambda: sidecar.router.ready and bool(sidecar.admission.limits), within=10)
                admitted = refused = 0
                deadline = time.monotonic() + 20
                # Ask until the budget is spent: the first asks find no share yet (Retry-After 1), then the
                # operator's grants follow the demand up to the limit, and never past it.
                while refused < 3 and time.monotonic() < deadline:
                    try:
                        await client.chat.completions.create(**chat_body(max_tokens=4))
                        admitted += 1
                        refused = 0
                    except openai.RateLimitError as error:
                        assert error.code == "budget_exceeded"
                        assert error.response.headers["x-llmroute-policy"] == "limits"
                        refused += admitted > 0
                        await asyncio.sleep(0.3)
                assert admitted == 2  # $8 of $10: a third $4 request never fits
                assert sim.stats.requests == 2
                await eventually(lambda: (f := plane.quota_figures(MONTHLY)) is not None and f.used >= 8.0, 10)
                assert sidecar.ledger.quotas[MONTHLY].granted <= 10.0
            finally:
                await client.close()
    finally:
        allocator.cancel()
        await asyncio.gather(allocator, return_exceptions=True)
        await sim.stop()
