"""Local mode `--policies PATH`: one sidecar enforces LLMPolicy files alone, reloading them like its routes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from llmroute.model.policy import QuotaKey
from llmroute.sim import Behavior, Latency

from .harness import Harness, chat_body, running

FAST = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
DEAR = {"price": {"inputPerMTok": 0.0, "outputPerMTok": 1_000_000.0}}  # $4 per request of 4 output tokens
MONTHLY = QuotaKey("default", "shop-limits", "monthly", "usd")


def write_policy(path: Path, spec: dict[str, Any]) -> None:
    doc = {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMPolicy", "metadata": {"name": "shop-limits"}, "spec": spec}
    path.write_text(yaml.safe_dump(doc))


def monthly(limit: float, **extra: Any) -> dict[str, Any]:
    return {"budgets": [{"name": "monthly", "window": "31d", "limitUSD": limit, "action": "Reject"}], **extra}


async def until(check: Any) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the sidecar did not reload within 5 s")


async def test_policy_files_are_enforced_reloaded_and_a_bad_one_keeps_the_last(tmp_path: Path) -> None:
    policy_file = tmp_path / "policies" / "shop.yaml"
    policy_file.parent.mkdir()
    write_policy(policy_file, monthly(6, passthrough="Deny"))
    argv = ["--policies", str(policy_file.parent), "--passthrough", "openai=http://127.0.0.1:9/v1"]
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}, argv=argv) as h:
        client = h.client()
        await client.chat.completions.create(**chat_body(max_tokens=4))
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(**chat_body(max_tokens=4))
        assert refused.value.code == "budget_exceeded"
        assert refused.value.response.headers["x-llmroute-policy"] == "shop-limits"

        async with h.http() as http:  # a model no route names: passthrough, which the policy denies
            denied = await http.post("/chat/completions", json={**chat_body(), "model": "gpt-unrouted"})
        assert denied.status_code == 403
        assert "LLMPolicy default/shop-limits" in denied.json()["error"]["message"]

        write_policy(policy_file, monthly(100))
        h.sidecar.reload()
        await until(lambda: h.sidecar.ledger.quotas[MONTHLY].limit == 100)
        await client.chat.completions.create(**chat_body(max_tokens=4))
        assert h.sidecar.ledger.quotas[MONTHLY].used == pytest.approx(8.0)  # the month's spend carried over
        assert h.sidecar.passthrough is not None and h.sidecar.passthrough.policy.allow

        write_policy(policy_file, monthly(-1))
        h.sidecar.reload()
        await until(lambda: bool(h.sidecar.files and h.sidecar.files.problems))
        assert await debug_problems(h)
        assert h.sidecar.ledger.quotas[MONTHLY].limit == 100  # the last good policies stay in force
        await client.chat.completions.create(**chat_body(max_tokens=4))


async def debug_problems(h: Harness) -> list[str]:
    """What /debug/routes says is wrong with the files."""
    async with h.http() as http:
        body = (await http.get(f"{h.admin_url}/debug/routes")).json()
    return [problem for items in body.get("problems", {}).values() for problem in items]
