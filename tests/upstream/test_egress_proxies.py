"""Egress through https:// and SOCKS5 proxies, on real sockets, against a third-party proxy server (pproxy):
TLS to the proxy and TLS to the backend inside it, SOCKS5 with and without credentials, socks5 resolving names
here and socks5h at the proxy, wrong credentials and unreachable proxies as the app sees them, NO_PROXY, and
passthrough through the same proxies."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
import sys
from pathlib import Path

import pytest
import uvloop

from llmroute.sidecar.upstream.egress import Egress, parse_proxy
from llmroute.sidecar.upstream.neterrors import ConnectError, ProxyError, TransportError, TransportTimeout
from llmroute.sidecar.upstream.transport import Pool
from tests.egress import PrivateCA
from tests.proxies import pproxy
from tests.sidecar.harness import sidecar_for

from .conftest import RawServer, answer_chat
from .test_egress import CHAT, ask, route

PASSWORD = "pw-9f3c-secret"
CREDENTIALS = f"egress:{PASSWORD}"


def _no_secret(text: str) -> None:
    assert PASSWORD not in text and CREDENTIALS not in text


async def test_chat_through_an_https_proxy_to_a_tls_backend(
    tmp_path: Path, pki: PrivateCA, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS to the proxy (its certificate from the private CA, trusted through --ca-bundle), CONNECT with
    credentials, then TLS to the backend inside the tunnel."""
    async with pproxy(tmp_path, "http", credentials=CREDENTIALS, tls=pki, host="localhost") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        spec = route(f"https://localhost:{https_backend.port}/v1")
        async with sidecar_for(tmp_path, spec, ["--ca-bundle", str(pki.ca)]) as sidecar:
            first, second = await ask(sidecar), await ask(sidecar)
            _no_secret(sidecar.egress.describe())
        assert first.status_code == second.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"] == "hello from afar"
        assert proxy.destinations() == [f"localhost:{https_backend.port}"]  # one tunnel, kept alive for both
        assert https_backend.connections == 1

        async with sidecar_for(tmp_path, spec) as untrusting:  # the proxy's certificate is not trusted
            refused = await ask(untrusting)
    assert refused.status_code == 503
    message = refused.json()["error"]["message"]
    assert "through the proxy" in message and "certificate verify failed" in message.lower()
    _no_secret(message)
    assert https_backend.connections == 1  # nothing reached the backend


async def test_an_http_backend_through_an_https_proxy_goes_in_absolute_form_inside_tls(
    tmp_path: Path, pki: PrivateCA, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pproxy(tmp_path, "http", credentials=CREDENTIALS, tls=pki) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1"), ["--ca-bundle", str(pki.ca)]) as sidecar:
            answer = await ask(sidecar)
    assert answer.status_code == 200, answer.text
    assert proxy.destinations() == [f"127.0.0.1:{http_backend.port}"]
    assert [r.target for r in http_backend.received] == ["/v1/chat/completions"]  # the proxy sent it on as origin-form


async def test_wrong_credentials_at_an_https_proxy_are_a_503_naming_the_proxys_answer(
    tmp_path: Path, pki: PrivateCA, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pproxy(tmp_path, "http", credentials=CREDENTIALS, tls=pki) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace(PASSWORD, "not-it"))
        spec = route(f"https://localhost:{https_backend.port}/v1")
        async with sidecar_for(tmp_path, spec, ["--ca-bundle", str(pki.ca)]) as sidecar:
            answer = await ask(sidecar)
    assert answer.status_code == 503
    assert "407 Proxy Authentication Required" in answer.json()["error"]["message"]
    assert "not-it" not in answer.text and https_backend.received == []


@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_chat_through_a_socks5_proxy_with_credentials(
    tmp_path: Path,
    pki: PrivateCA,
    https_backend: RawServer,
    http_backend: RawServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    scheme: str,
) -> None:
    """A TLS backend by name and a plain one by address, both through the proxy: socks5h hands it the name,
    socks5 the address the name resolves to here."""
    caplog.set_level(logging.DEBUG)
    resolved = socket.getaddrinfo("localhost", https_backend.port, type=socket.SOCK_STREAM)[0][4][0]
    if resolved != "127.0.0.1":
        pytest.skip(f"localhost resolves to {resolved} first here; the backend listens on 127.0.0.1")
    async with pproxy(tmp_path, "socks5", credentials=CREDENTIALS) as proxy:
        url = proxy.url.replace("socks5://", f"{scheme}://")
        monkeypatch.setenv("HTTPS_PROXY", url)
        monkeypatch.setenv("HTTP_PROXY", url)
        tls_spec = route(f"https://localhost:{https_backend.port}/v1")
        async with sidecar_for(tmp_path, tls_spec, ["--ca-bundle", str(pki.ca)]) as sidecar:
            assert (await ask(sidecar)).status_code == 200
            _no_secret(sidecar.egress.describe())
        async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1")) as sidecar:
            assert (await ask(sidecar)).status_code == 200
    by_name = "localhost" if scheme == "socks5h" else "127.0.0.1"
    assert proxy.destinations() == [f"{by_name}:{https_backend.port}", f"127.0.0.1:{http_backend.port}"]
    assert len(https_backend.received) == len(http_backend.received) == 1
    _no_secret("\n".join(record.getMessage() for record in caplog.records))


async def test_a_socks5_proxy_without_authentication(
    tmp_path: Path, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pproxy(tmp_path, "socks5") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1")) as sidecar:
            assert (await ask(sidecar)).status_code == 200
    assert proxy.destinations() == [f"127.0.0.1:{http_backend.port}"]


async def test_wrong_or_missing_socks5_credentials_are_a_503_in_the_apps_shape(
    tmp_path: Path, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    async with pproxy(tmp_path, "socks5", credentials=CREDENTIALS) as proxy:
        for url in (proxy.url.replace(PASSWORD, "wrong-pw-77"), proxy.url.replace(f"{CREDENTIALS}@", "")):
            monkeypatch.setenv("HTTP_PROXY", url)
            async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1")) as sidecar:
                answers.append(await ask(sidecar))
    wrong, missing = answers
    assert wrong.status_code == missing.status_code == 503
    assert wrong.json()["error"]["type"] and "wrong credentials?" in wrong.json()["error"]["message"]
    # pproxy hangs up on a client that offers no method it takes, rather than answering "no acceptable methods".
    assert "closed the connection instead of choosing an authentication method" in missing.json()["error"]["message"]
    assert http_backend.received == [] and proxy.destinations() == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "wrong-pw-77" not in wrong.text + logged


async def test_no_proxy_bypasses_a_socks5_proxy(
    tmp_path: Path, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pproxy(tmp_path, "socks5") as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("socks5://", "socks5h://"))
        monkeypatch.setenv("NO_PROXY", "127.0.0.0/8")
        async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1")) as sidecar:
            assert (await ask(sidecar)).status_code == 200
    assert proxy.destinations() == [] and len(http_backend.received) == 1


@pytest.mark.parametrize("kind", ["socks5h", "https"])
async def test_passthrough_goes_through_the_same_proxy(
    tmp_path: Path, pki: PrivateCA, https_backend: RawServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    scheme, tls = ("socks5", None) if kind == "socks5h" else ("http", pki)
    async with pproxy(tmp_path, scheme, credentials=CREDENTIALS, tls=tls) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("socks5://", "socks5h://"))
        upstream = f"openai=https://localhost:{https_backend.port}/v1"
        argv = ["--passthrough", upstream, "--ca-bundle", str(pki.ca)]
        async with sidecar_for(tmp_path, route("http://127.0.0.1:9/v1"), argv) as sidecar:
            answer = await ask(sidecar, {**CHAT, "model": "not-routed"})
    assert answer.status_code == 200, answer.text
    assert proxy.destinations() == [f"localhost:{https_backend.port}"]
    assert https_backend.received[0].json()["model"] == "not-routed"


async def test_an_unreachable_proxy_is_a_503_naming_it(
    tmp_path: Path, http_backend: RawServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections to it are refused, and it stays ours
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        monkeypatch.setenv("HTTP_PROXY", f"socks5://{CREDENTIALS}@127.0.0.1:{port}")
        async with sidecar_for(tmp_path, route(http_backend.base_url + "/v1")) as sidecar:
            answer = await ask(sidecar)
    assert answer.status_code == 503
    message = answer.json()["error"]["message"]
    assert f"proxy socks5://127.0.0.1:{port}" in message and "connect call failed" in message.lower()
    _no_secret(answer.text)


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("kind", ["https", "socks5h", "http"])
def test_tls_through_each_kind_of_proxy(tmp_path: Path, pki: PrivateCA, kind: str, loop: str) -> None:
    """TLS to the backend started on the tunnel (inside TLS to an https:// proxy), verified there too (a backend
    whose certificate names another host is refused), on uvloop (production's loop) and asyncio's own."""
    other_cert, other_key = pki.issue(tmp_path / "other", "other", "DNS:other.example")

    async def main() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith(loop)
        right, wrong = RawServer(answer_chat), RawServer(answer_chat)
        right.tls = pki.server_context()
        wrong.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        wrong.tls.load_cert_chain(other_cert, other_key)
        await right.start()
        await wrong.start()
        try:
            scheme, tls = ("http", pki) if kind == "https" else ("socks5" if kind == "socks5h" else "http", None)
            async with pproxy(tmp_path, scheme, credentials=CREDENTIALS, tls=tls) as proxy:
                url = proxy.url.replace("socks5:", "socks5h:")
                egress = Egress(https_proxy=parse_proxy(url, "HTTPS_PROXY"), ca_files=(pki.ca,))
                pool = Pool(egress=egress)
                try:
                    url = f"https://localhost:{right.port}/v1/chat/completions"
                    answer = await pool.request("POST", url, {}, b"{}")
                    assert answer.status == 200 and b"hello from afar" in await answer.read()
                    with pytest.raises(ConnectError) as refused:
                        await pool.request("POST", f"https://localhost:{wrong.port}/v1/chat/completions", {}, b"{}")
                    if loop == "uvloop" or kind != "https" or sys.version_info >= (3, 11, 8):
                        assert "certificate verify failed" in str(refused.value)
                    else:  # CPython gh-113214: the failure inside TLS in TLS surfaces without its reason
                        assert "inside the proxy's TLS failed" in str(refused.value)
                finally:
                    await pool.aclose()
            assert proxy.destinations() == [f"localhost:{right.port}", f"localhost:{wrong.port}"]
            assert wrong.received == []
        finally:
            await right.stop()
            await wrong.stop()

    run = uvloop.run if loop == "uvloop" else asyncio.run
    run(main())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://proxy.corp", "https://proxy.corp:443"),
        ("socks5://proxy.corp", "socks5://proxy.corp:1080"),
        ("SOCKS5H://u:p@proxy.corp:9050", "socks5h://proxy.corp:9050"),
        ("proxy.corp:3128", "proxy.corp:3128"),
    ],
)
def test_proxy_urls_and_their_default_ports(url: str, expected: str) -> None:
    assert str(parse_proxy(url, "HTTPS_PROXY")) == expected


def test_unusable_proxy_urls_are_refused_at_start_without_their_credentials() -> None:
    with pytest.raises(ValueError, match="scheme must be http, https, socks5 or socks5h") as caught:
        Egress.from_environment({"HTTPS_PROXY": f"socks4://{CREDENTIALS}@proxy:1080"})
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ValueError, match="1 to 255 bytes"):
        parse_proxy(f"socks5://user:{'x' * 256}@proxy:1080", "HTTP_PROXY")
    socks = parse_proxy(f"socks5://{CREDENTIALS}@proxy:1080", "HTTP_PROXY")
    assert socks.credentials == (b"egress", PASSWORD.encode()) and socks.authorization is None
    assert PASSWORD not in repr(socks) + str(socks) + Egress(http_proxy=socks).describe()


@pytest.mark.parametrize(
    ("userinfo", "script", "message"),
    [
        ("u:p@", [b"\x05\x02", b"\x01\x01"], "refused the user name and password"),
        ("", [b"\x05\xff"], "accepts none of the authentication methods offered (no authentication)"),
        ("", [b"\x05\x00", b"\x05\x04\x00\x01" + bytes(6)], "could not connect to 127.0.0.1:9: host unreachable"),
        ("", [b"HTTP/1.1 400 Bad Request\r\n\r\n"], "does not speak SOCKS5"),
    ],
)
async def test_a_socks5_proxys_refusals_are_named(userinfo: str, script: list[bytes], message: str) -> None:
    """What pproxy does not send (it hangs up instead): RFC 1929's failure status, RFC 1928's "no acceptable
    methods" and a CONNECT reply code; and a proxy that is no SOCKS5 server at all."""

    async def scripted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in script:  # one answer to each message of the client's
            await reader.read(512)
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(scripted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(egress=Egress(http_proxy=parse_proxy(f"socks5://{userinfo}127.0.0.1:{port}", "HTTP_PROXY")))
    try:
        with pytest.raises(ProxyError, match=re.escape(message)):
            await pool.request("POST", "http://127.0.0.1:9/v1/chat/completions", {}, b"{}")
    finally:
        await pool.aclose()
        server.close()


async def test_a_tunnel_the_proxy_closes_as_it_grants_it_fails_at_once() -> None:
    """A SOCKS5 proxy that grants the CONNECT and hangs up (the backend went away at once): the request fails
    over as a connection failure at once, not after waiting for an answer on a closed tunnel."""

    async def grant_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(512)
        writer.write(b"\x05\x00")
        await reader.read(512)
        writer.write(b"\x05\x00\x00\x01" + bytes(6))
        writer.close()

    server = await asyncio.start_server(grant_and_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Pool(egress=Egress(http_proxy=parse_proxy(f"socks5://127.0.0.1:{port}", "HTTP_PROXY")))
    try:
        with pytest.raises(TransportError) as caught:
            await asyncio.wait_for(pool.request("POST", "http://127.0.0.1:9/v1/chat/completions", {}, b"{}"), 30)
        assert not isinstance(caught.value, TransportTimeout), caught.value
    finally:
        await pool.aclose()
        server.close()
