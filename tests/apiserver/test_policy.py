"""An LLMPolicy end to end on a real API server: `kubectl apply` it, and the operator (the chart's RBAC, TLS,
TokenReview) pushes it to a real sidecar of the namespace, which enforces it with no call to anyone on the
request path; the spend then shows in the policy's status and in `kubectl get llmpolicy`, which the real
server would have pruned had the CRD's status schema lacked a field."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.apiserver.conftest import OperatorProcess
from tests.apiserver.harness import ApiServer, eventually, http_status, unique
from tests.ports import free_port

PRICE = {"inputPerMTok": 100.0, "outputPerMTok": 100.0}
"""Dear enough that a few dozen simulated answers spend the budget."""
LIMIT_USD = 0.1
MAX_TOKENS = 32
"""Each request reserves its prompt estimate plus this (a few thousandths of a dollar), settled on real usage."""
POLICY = "limits"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[str]:
    """`llmroute sim` serving one OpenAI-style backend; its base URL."""
    port = free_port()
    config = {"seed": 1, "backends": [{"name": "sim", "kind": "openai", "port": port, "models": ["m"],
                                       "behavior": {"latency": 0.005}}]}  # fmt: skip
    (tmp_path / "sim.json").write_text(json.dumps(config))
    with (tmp_path / "sim.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmroute", "sim", str(tmp_path / "sim.json")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        eventually(lambda: http_status(f"http://127.0.0.1:{port}/v1/models") == 200, what="the simulated backend")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def shop(apiserver: ApiServer, operator: OperatorProcess, backend: str) -> str:
    """A namespace with ServiceAccount `app`, a route over the priced backend, and a Reject budget per UTC month
    (a window that does not turn while the test runs)."""
    namespace = apiserver.create_namespace(unique("shop"))
    route = {"models": ["chat"], "backends": [{"name": "sim", "provider": "openai", "url": backend, "model": "m",
                                               "price": PRICE}]}  # fmt: skip
    policy = {"tier": "growth", "budgets": [{"name": "monthly", "window": "30d", "limitUSD": LIMIT_USD,
                                             "action": "Reject"}]}  # fmt: skip
    apiserver.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": namespace}},
        {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "chat", "namespace": namespace},
         "spec": route},
        {"apiVersion": "llmroute.io/v1alpha1", "kind": "LLMPolicy",
         "metadata": {"name": POLICY, "namespace": namespace}, "spec": policy},
    )  # fmt: skip
    return namespace


@pytest.fixture
def sidecar(apiserver: ApiServer, operator: OperatorProcess, shop: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real `llmroute sidecar` of shop with its projected token: (the app's base URL, the admin port)."""
    token = tmp_path / "token"
    token.write_text(apiserver.token(shop, "app", "llmroute"))
    app, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "llmroute", "sidecar", f"--control-plane=127.0.0.1:{operator.grpc_port}",
        *operator.sidecar_flags(tmp_path),
        f"--namespace={shop}", "--pod-name=storefront-0", f"--token-file={token}", "--access-log=off",
        f"--listen=127.0.0.1:{app}", f"--admin-listen=127.0.0.1:{admin}",
    ]  # fmt: skip
    with (tmp_path / "sidecar.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{app}/v1", admin
    finally:
        process.terminate()
        process.wait(timeout=30)


def _limit_gauge(admin_port: int, namespace: str) -> bool:
    """Whether the sidecar's /metrics shows the policy's limit (it has the policy), False while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return False
    label = f'policy="{namespace}/{POLICY}"'
    return any(line.startswith("llmroute_policy_limit{") and label in line for line in text.splitlines())


def _budget_status(apiserver: ApiServer, namespace: str) -> dict[str, Any]:
    policy = apiserver.get("llmpolicy", "-n", namespace, POLICY) or {}
    budgets: list[dict[str, Any]] = (policy.get("status") or {}).get("budgets") or [{}]
    return budgets[0]


def test_an_applied_policy_is_enforced_by_the_namespaces_sidecar_and_its_spend_shown(
    apiserver: ApiServer, shop: str, sidecar: tuple[str, int]
) -> None:
    base_url, admin = sidecar
    eventually(lambda: _limit_gauge(admin, shop), what="the policy at the sidecar")
    # The SDK's own retries (2, honouring Retry-After) as apps use it: a sidecar whose share runs out while the
    # budget has room gets more within about a second and says so with `Retry-After: 1`.
    client = openai.OpenAI(base_url=base_url, api_key="app-key", max_retries=2)
    answered = 0
    refusal: openai.RateLimitError | None = None
    deadline = time.monotonic() + 120
    while refusal is None and time.monotonic() < deadline:
        try:
            client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=MAX_TOKENS
            )
            answered += 1
        except openai.RateLimitError as exc:
            refusal = exc
    assert refusal is not None and answered >= 1, f"{answered} answers and no refusal within the deadline"
    assert refusal.code == "budget_exceeded"
    assert refusal.response.headers["x-llmroute-policy"] == POLICY
    assert int(refusal.response.headers["retry-after"]) >= 1

    def exhausted() -> dict[str, Any] | None:
        status = _budget_status(apiserver, shop)
        return status if status.get("state") == "Exhausted" else None

    # Refused with less left than a request needs: Exhausted, though the spend may be a request short of the limit.
    status = eventually(exhausted, what="the Exhausted budget in the policy's status")
    assert LIMIT_USD * 0.85 <= status["spentUSD"] <= LIMIT_USD * 1.05 and status["limitUSD"] == LIMIT_USD, status
    header, row = apiserver.kubectl("get", "llmpolicy", "-n", shop, POLICY).stdout.splitlines()
    assert header.split() == ["NAME", "TIER", "BUDGET", "STATE", "SPENT", "LIMIT", "AGE"]  # "BUDGET STATE": one
    name, tier, state, spent_column, limit_column, _ = row.split()
    assert (name, tier, state, float(limit_column)) == (POLICY, "growth", "Exhausted", LIMIT_USD)
    assert float(spent_column) >= LIMIT_USD * 0.85
