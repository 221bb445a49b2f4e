"""Keys from Secrets named by apiKeySecretRef: missing, created, rotated; never in status or Events."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from llmroute.sidecar.routes.controlplane import build_table
from llmroute.sidecar.upstream.client import Upstream
from tests.egress import private_ca

if TYPE_CHECKING:
    from conftest import Bench, StubSidecar


CHAT_ANSWER = {
    "id": "c",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "signed by a private CA"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


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


async def test_a_backend_ca_secret_reaches_the_sidecar_and_its_tls(
    bench: Bench, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """tls.caSecretRef: the operator watches the CA's Secret like a key's, sends the PEM in Route.ca_bundles,
    and the sidecar's client trusts it for that backend (a real https server signed by the private CA)."""
    caplog.set_level(logging.DEBUG)
    pki = private_ca(tmp_path / "pki")
    pem = pki.ca.read_text()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.cert, pki.key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = json.dumps(CHAT_ANSWER).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body))
        writer.write(body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    sidecar = await bench.sidecar("shop", "storefront-0")
    spec = bench.spec(["chat"])
    spec["backends"][0] |= {
        "url": f"https://localhost:{port}/v1",
        "tls": {"caSecretRef": {"name": "corp-ca", "key": "ca.crt"}},
    }
    await bench.kube.apply_route("shop", "support", spec)
    route = await bench.eventually(lambda: _refs(bench, reason="SecretNotFound"), what="SecretNotFound")
    assert "spec.backends[0].tls.caSecretRef" in bench.condition(route, "ResolvedRefs")["message"]

    await bench.kube.put_secret("shop", "corp-ca", {"ca.crt": pem})

    async def delivered() -> bool:
        route = sidecar.table().get("support")
        return route is not None and dict(route.ca_bundles) == {"primary": pem}

    await bench.eventually(delivered, what="the CA bundle at the sidecar")
    table = build_table(sidecar.received[-1][1], "shop")
    upstream = Upstream(table.routes[0].backends[0])
    try:
        completion = await upstream.complete(
            {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}, timeout=10
        )
    finally:
        await upstream.aclose()
        server.close()
    assert json.loads(completion.body)["choices"][0]["message"]["content"] == "signed by a private CA"

    # The status has caught up (it is written in batches): the next False is about the new Secret.
    await bench.eventually(lambda: _refs(bench, status="True"), what="ResolvedRefs=True")
    # A Secret that holds no certificate: the route says so, and the last good CA keeps serving.
    await bench.kube.put_secret("shop", "corp-ca", {"ca.crt": "not a certificate"})
    route = await bench.eventually(lambda: _refs(bench, status="False"), what="ResolvedRefs=False")
    assert bench.condition(route, "ResolvedRefs")["message"] == (
        "spec.backends[0].tls.caSecretRef: Secret 'corp-ca' key 'ca.crt' holds no valid PEM certificate"
    )
    assert dict(sidecar.table()["support"].ca_bundles) == {"primary": pem}
    body = pem.splitlines()[1]  # a line of the certificate itself
    events = await bench.kube.events("shop")
    assert body not in json.dumps(route) + json.dumps(events)
    assert body not in caplog.text and "not a certificate" not in caplog.text
