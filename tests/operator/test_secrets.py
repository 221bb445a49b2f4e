"""Keys from Secrets named by apiKeySecretRef: missing, created, rotated; never in status or Events."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Bench, StubSidecar


async def _refs(bench: Bench, **expected: Any) -> dict[str, Any] | None:
    route = await bench.kube.get_route("shop", "support")
    cond = bench.condition(route, "ResolvedRefs")
    return route if all(cond.get(k) == v for k, v in expected.items()) else None


async def _key(sidecar: StubSidecar, value: str) -> bool:
    route = sidecar.table().get("support")
    return route is not None and dict(route.api_keys) == {"primary": value}


async def test_a_missing_secret_then_its_creation(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"], key=("llm-keys", "openai")))

    route = await bench.eventually(lambda: _refs(bench, status="False"), what="ResolvedRefs=False")
    refs = bench.condition(route, "ResolvedRefs")
    assert refs["reason"] == "SecretNotFound"
    assert refs["message"] == "spec.backends[0].apiKeySecretRef: Secret shop/llm-keys not found"
    assert bench.condition(route, "Accepted")["status"] == "True"
    assert "support" not in sidecar.table()  # never served: nothing to fall back to

    await bench.kube.put_secret("shop", "llm-keys", {"anthropic": "sk-ant-1"})
    route = await bench.eventually(lambda: _refs(bench, reason="KeyNotFound"), what="KeyNotFound")
    assert bench.condition(route, "ResolvedRefs")["message"] == (
        "spec.backends[0].apiKeySecretRef: Secret shop/llm-keys has no key 'openai'"
    )

    await bench.kube.put_secret("shop", "llm-keys", {"anthropic": "sk-ant-1", "openai": "sk-live-1"})
    await bench.eventually(lambda: _refs(bench, status="True", reason="SecretsFound"), what="ResolvedRefs=True")
    await bench.eventually(lambda: _key(sidecar, "sk-live-1"), what="the key at the sidecar")

    route = await bench.kube.get_route("shop", "support")
    events = await bench.kube.events("shop")
    assert {e["reason"] for e in events} == {"SecretNotFound", "KeyNotFound"}
    assert "sk-" not in json.dumps(route) + json.dumps(events)


async def test_a_rotated_key_reaches_the_sidecar_without_a_restart(bench: Bench) -> None:
    await bench.kube.put_secret("shop", "llm-keys", {"openai": "sk-live-1"})
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"], key=("llm-keys", "openai")))
    await bench.eventually(lambda: _key(sidecar, "sk-live-1"), what="the first key")
    first = sidecar.version

    await bench.kube.put_secret("shop", "llm-keys", {"openai": "sk-live-2"})
    await bench.eventually(lambda: _key(sidecar, "sk-live-2"), what="the rotated key")
    assert sidecar.version != first
    assert sidecar.closed is None  # same stream: no reconnect needed

    # Deleting the Secret leaves the last good key serving, and says why.
    await bench.kube.call("DELETE", "/api/v1/namespaces/shop/secrets/llm-keys")
    await bench.eventually(lambda: _refs(bench, reason="SecretNotFound"), what="SecretNotFound")
    pushes = len(sidecar.received)
    await asyncio.sleep(0.5)  # well past the control plane's 100 ms push debounce
    assert len(sidecar.received) == pushes
    assert dict(sidecar.table()["support"].api_keys) == {"primary": "sk-live-2"}
