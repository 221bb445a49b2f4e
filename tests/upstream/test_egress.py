"""Egress on real sockets: a private-CA https backend through a CONNECT proxy, NO_PROXY, absolute-form http,
passthrough through the proxy, a backend's own CA from a mounted Secret, the connection cap and the answer cap."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.upstream import UpstreamError
from llmroute.sidecar.upstream.client import Upstream
from llmroute.sidecar.upstream.egress import Egress, NoProxy, parse_proxy
from llmroute.sidecar.upstream.neterrors import PoolTimeout
from llmroute.sidecar.upstream.transport import Pool
from tests.egress import PrivateCA, RecordingProxy
from tests.sidecar.harness import sidecar_for

from .conftest import ANSWER, RawServer, Received, Responder

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
CA_REF = {"caSecretRef": {"name": "private-ca", "key": "ca.crt"}}


@pytest.fixture
async def proxy() -> AsyncIterator[RecordingProxy]:
    proxy = await RecordingProxy().start()
    yield proxy
    await proxy.stop()


def route(url: str, **extra: Any) -> dict[str, Any]:
    return {"models": ["chat"], "backends": [{"name": "b", "provider": "openai", "url": url, "model": "m", **extra}]}


async def ask(sidecar: Any, body: dict[str, Any] = CHAT) -> httpx.Response:
    app = f"http://127.0.0.1:{sidecar.app_server.port}/v1"
    async with httpx.AsyncClient(base_url=app, timeout=30, trust_env=False) as client:  # the app itself: no proxy
        return await client.post("/chat/completions", json=body)


async def test_https_backend_with_a_private_ca_through_a_connect_proxy(
    tmp_path: Path, pki: PrivateCA, proxy: RecordingProxy, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    spec = route(f"https://localhost:{https_backend.port}/v1")
    async with sidecar_for(tmp_path, spec, ["--ca-bundle", str(pki.ca)]) as sidecar:
        answer = await ask(sidecar)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hello from afar"
    assert proxy.tunnels == [f"localhost:{https_backend.port}"]  # one tunnel, reused by the keep-alive pool
    assert proxy.requests == []  # the proxy never saw the request itself: it went inside TLS
    assert [r.target for r in https_backend.received] == ["/v1/chat/completions"]

    async with sidecar_for(tmp_path, spec) as untrusting:  # the same path without the private CA
        refused = await ask(untrusting)
    assert refused.status_code == 503
    assert "certificate verify failed" in refused.json()["error"]["message"].lower()


async def test_ssl_cert_file_adds_to_the_public_roots(
    tmp_path: Path, pki: PrivateCA, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
    async with sidecar_for(tmp_path, route(f"https://localhost:{https_backend.port}/v1")) as sidecar:
        answer = await ask(sidecar)
        assert answer.status_code == 200, answer.text
        assert len(sidecar.egress.ssl_context().get_ca_certs()) > 100  # the public roots are still trusted


@pytest.fixture
def hashed_ca_dir(tmp_path: Path, pki: PrivateCA) -> Path:
    """A directory holding the private CA under OpenSSL's hashed lookup name, as `openssl rehash` makes it."""
    certs = tmp_path / "certs"
    certs.mkdir()
    shutil.copy(pki.ca, certs / "private-ca.pem")
    subprocess.run(["openssl", "rehash", str(certs)], check=True, capture_output=True)
    return certs


async def test_ssl_cert_dir_adds_a_hashed_directory_to_the_public_roots(
    tmp_path: Path, hashed_ca_dir: Path, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = hashed_ca_dir
    spec = route(f"https://localhost:{https_backend.port}/v1")
    monkeypatch.setenv("SSL_CERT_DIR", f"{tmp_path / 'empty-but-listed'}")
    with pytest.raises(ValueError, match="SSL_CERT_DIR"):
        Egress.from_environment()  # a directory that is not there stops the sidecar at start
    (tmp_path / "other").mkdir()
    monkeypatch.setenv("SSL_CERT_DIR", f"{tmp_path / 'other'}{os.pathsep}{certs}")  # a list, as OpenSSL reads it
    async with sidecar_for(tmp_path, spec) as sidecar:
        answer = await ask(sidecar)
        assert answer.status_code == 200, answer.text
        assert str(certs) in sidecar.egress.describe()


@pytest.mark.parametrize("no_proxy", ["localhost", ".localhost", "example.com, localhost:{port}", "*"])
async def test_no_proxy_goes_direct(
    tmp_path: Path,
    pki: PrivateCA,
    proxy: RecordingProxy,
    https_backend: RawServer,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    monkeypatch.setenv("no_proxy", no_proxy.format(port=https_backend.port))
    spec = route(f"https://localhost:{https_backend.port}/v1")
    async with sidecar_for(tmp_path, spec, ["--ca-bundle", str(pki.ca)]) as sidecar:
        answer = await ask(sidecar)
    assert answer.status_code == 200, answer.text
    assert proxy.tunnels == [] and len(https_backend.received) == 1


async def test_http_backend_through_the_proxy_in_absolute_form_with_credentials(
    tmp_path: Path, proxy: RecordingProxy, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_url = proxy.url.replace("http://", "http://egress:p%40ss@")
    monkeypatch.setenv("HTTP_PROXY", user_url)
    async with sidecar_for(tmp_path, route(f"http://127.0.0.1:{http_backend.port}/v1")) as sidecar:
        assert (await ask(sidecar)).status_code == 200
    assert proxy.requests == [f"POST http://127.0.0.1:{http_backend.port}/v1/chat/completions HTTP/1.1"]
    assert proxy.authorizations == ["Basic " + base64.b64encode(b"egress:p@ss").decode()]
    assert proxy.tunnels == []


async def test_passthrough_follows_the_same_proxy(
    tmp_path: Path, proxy: RecordingProxy, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    upstream = f"openai=http://127.0.0.1:{http_backend.port}/v1"
    async with sidecar_for(tmp_path, route("http://127.0.0.1:9/v1"), ["--passthrough", upstream]) as sidecar:
        answer = await ask(sidecar, {**CHAT, "model": "not-routed"})
    assert answer.status_code == 200, answer.text
    assert proxy.requests == [f"POST http://127.0.0.1:{http_backend.port}/v1/chat/completions HTTP/1.1"]
    assert http_backend.received[0].json()["model"] == "not-routed"


async def test_a_backend_names_its_own_ca_in_a_mounted_secret(
    tmp_path: Path, pki: PrivateCA, https_backend: RawServer
) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "private-ca").mkdir(parents=True)
    (secrets / "private-ca" / "ca.crt").write_text(pki.ca.read_text())
    spec = route(f"https://localhost:{https_backend.port}/v1", tls=CA_REF)
    async with sidecar_for(tmp_path, spec, ["--secrets-dir", str(secrets)]) as sidecar:
        answer = await ask(sidecar)
        async with httpx.AsyncClient(trust_env=False) as admin:
            debug = (await admin.get(f"http://127.0.0.1:{sidecar.admin_server.port}/debug/routes")).text
    assert answer.status_code == 200, answer.text
    assert "caSecretRef" in debug and "BEGIN CERTIFICATE" not in debug


async def test_a_ca_secret_without_a_certificate_rejects_the_route(tmp_path: Path, https_backend: RawServer) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "private-ca").mkdir(parents=True)
    (secrets / "private-ca" / "ca.crt").write_text("not a certificate")
    spec = route(f"https://localhost:{https_backend.port}/v1", tls=CA_REF)
    async with sidecar_for(tmp_path, spec, ["--secrets-dir", str(secrets)]) as sidecar:
        problems = sidecar.files.problems if sidecar.files is not None else {}
    assert any("tls.caSecretRef" in str(p) and "no valid PEM" in str(p) for ps in problems.values() for p in ps)


async def test_a_proxy_refusing_the_tunnel_is_a_connect_failure(
    proxy: RecordingProxy, https_backend: RawServer, backend: Any
) -> None:
    proxy.refuse = 403
    upstream = Upstream(
        backend(f"https://localhost:{https_backend.port}/v1"), Egress(https_proxy=parse_proxy(proxy.url, "x"))
    )
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.complete(CHAT, timeout=10)
    finally:
        await upstream.aclose()
    assert caught.value.kind is FailureKind.CONNECT_FAILURE
    assert "403" in caught.value.message and "proxy" in caught.value.message
    assert https_backend.received == []


async def test_answers_larger_than_the_cap_are_a_502_in_the_apps_shape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def huge(received: Received, responder: Responder) -> None:
        await responder.json(200, {**ANSWER, "padding": "x" * 50_000})

    server = await RawServer(huge).start()
    try:
        spec = route(f"http://127.0.0.1:{server.port}/v1")
        async with sidecar_for(tmp_path, spec, ["--max-answer-bytes", "10000"]) as sidecar:
            answer = await ask(sidecar)
    finally:
        await server.stop()
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "answer_too_large" and "10000 bytes" in error["message"]
    assert len(server.received) == 1  # not retried elsewhere or again


async def test_connections_per_backend_are_capped_and_handed_over() -> None:
    release = asyncio.Event()

    async def slow(received: Received, responder: Responder) -> None:
        await release.wait()
        await responder.json(200, ANSWER)

    server = await RawServer(slow).start()
    pool = Pool(egress=Egress(max_connections=2))
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"

    async def call() -> int:
        response = await pool.request("POST", url, {}, b"{}")
        await response.read()
        return response.status

    try:
        calls = [asyncio.create_task(call()) for _ in range(6)]
        await asyncio.sleep(0.5)  # the other four had every chance to open connections: they must be waiting
        assert server.connections == 2 and len(server.received) == 2
        origin = ("http", "127.0.0.1", server.port)
        assert pool.open_connections(origin) == 2
        with pytest.raises(PoolTimeout, match="all 2 connections"):
            await pool.request("POST", url, {}, b"{}", connect_timeout=0.1)
        release.set()
        assert await asyncio.gather(*calls) == [200] * 6
        assert server.connections == 2  # the waiting calls got the freed connections, no new ones
        assert pool.open_connections(origin) == 2
    finally:
        release.set()
        await pool.aclose()
        await server.stop()


async def test_a_closed_connection_frees_its_slot_for_a_waiting_call() -> None:
    async def close_after_answer(received: Received, responder: Responder) -> None:
        await asyncio.sleep(0.1)
        await responder.send(200, b"{}", {"connection": "close"})
        await responder.reset()

    server = await RawServer(close_after_answer).start()
    pool = Pool(egress=Egress(max_connections=1))
    url = f"http://127.0.0.1:{server.port}/v1/chat/completions"

    async def call() -> bytes:
        response = await pool.request("POST", url, {}, b"{}")
        return await response.read()

    try:
        assert await asyncio.gather(call(), call(), call()) == [b"{}"] * 3
        assert server.connections == 3
        assert pool.open_connections(("http", "127.0.0.1", server.port)) == 0
    finally:
        await pool.aclose()
        await server.stop()


@pytest.mark.parametrize(
    ("no_proxy", "host", "port", "bypassed"),
    [
        ("", "api.openai.com", 443, False),
        ("*", "api.openai.com", 443, True),
        ("openai.com", "openai.com", 443, True),
        ("openai.com", "api.openai.com", 443, True),
        (".openai.com", "api.openai.com", 443, True),
        ("*.openai.com", "api.openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),
        ("OpenAI.com", "API.OPENAI.COM.", 443, True),
        ("openai.com:8443", "api.openai.com", 443, False),
        ("openai.com:8443", "api.openai.com", 8443, True),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("10.0.0.0/8", "10.example.com", 80, False),
        ("192.168.1.5", "192.168.1.5", 80, True),
        ("::1", "::1", 80, True),
        ("[::1]:8080", "::1", 8080, True),
        ("[::1]:8080", "::1", 80, False),
        ("fd00::/8", "fd12::1", 443, True),
        ("a.com,  b.com ,svc.cluster.local", "llmroute.llmroute-system.svc.cluster.local", 9000, True),
    ],
)
def test_no_proxy_semantics(no_proxy: str, host: str, port: int, bypassed: bool) -> None:
    assert NoProxy(no_proxy).bypasses(host, port) is bypassed


def test_proxy_variables_lower_case_first_and_bad_values_named() -> None:
    egress = Egress.from_environment(
        {"https_proxy": "http://lower:3128", "HTTPS_PROXY": "http://upper:3128", "HTTP_PROXY": "proxy.corp"}
    )
    assert str(egress.https_proxy) == "lower:3128" and str(egress.http_proxy) == "proxy.corp:80"
    assert egress.proxy_for("https", "api.openai.com", 443) == egress.https_proxy
    with pytest.raises(ValueError, match="HTTPS_PROXY: proxy scheme must be"):
        Egress.from_environment({"HTTPS_PROXY": "ftp://proxy:1080"})
    # ALL_PROXY stands in for a scheme whose own variable is unset or empty, as in curl and httpx.
    every = Egress.from_environment({"ALL_PROXY": "socks5://all:1080", "http_proxy": "http://web:3128"})
    assert str(every.https_proxy) == "socks5://all:1080" and str(every.http_proxy) == "web:3128"
    assert str(Egress.from_environment({"https_proxy": "", "all_proxy": "all:3128"}).https_proxy) == "all:3128"
    with pytest.raises(ValueError, match="ALL_PROXY: proxy scheme must be"):
        Egress.from_environment({"all_proxy": "socks4://proxy:1080"})
    with pytest.raises(ValueError, match="CA bundle /nonexistent"):
        Egress.from_environment({}, ca_bundle=Path("/nonexistent/ca.pem"))
    secret = parse_proxy("http://user:hunter2@proxy:3128", "HTTPS_PROXY")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in Egress(https_proxy=secret).describe()


def test_the_sidecar_refuses_an_unusable_ca_bundle_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("no certificate here")
    llmroute = Path(sys.executable).with_name("llmroute")
    run = subprocess.run(
        [str(llmroute), "sidecar", "--routes", str(tmp_path), "--ca-bundle", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and f"CA bundle {bad}" in run.stderr
