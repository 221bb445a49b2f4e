"""The replicas' peer port over real TLS: the leader's POST /fleet is taken only from a client presenting the
operator's certificate (the one the chart generates works both ways); anyone else gets 401 or 403, counted."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from llmroute.operator.peerport import PeerServer, PeerTLS
from tests.controlplane.test_tls import SERVICE_NAME, chart_certificate, install
from tests.egress import PrivateCA, private_ca
from tests.tools import helm_bin

__all__ = ["helm_bin"]

Serve = Callable[[PeerTLS, set[str]], "PeerServerUnderTest"]


class PeerServerUnderTest:
    """A PeerServer whose /fleet answers with what it was posted, and the registry its refusals are counted in."""

    def __init__(self, tls: PeerTLS, names: set[str]) -> None:
        self.registry = CollectorRegistry()
        self.posted: list[bytes] = []
        self.server = PeerServer(self._fleet, names, self.registry, tls)

    def _fleet(self, body: bytes) -> bytes:
        self.posted.append(body)
        return json.dumps({"replica": "replica-b"}).encode()

    def refused(self, reason: str) -> float:
        value = self.registry.get_sample_value("llmroute_peer_requests_refused_total", {"reason": reason})
        assert value is not None
        return value


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[PeerTLS, set[str]], PeerServerUnderTest]]:
    started: list[PeerServerUnderTest] = []

    async def start(tls: PeerTLS, names: set[str]) -> PeerServerUnderTest:
        under_test = PeerServerUnderTest(tls, names)
        await under_test.server.start("127.0.0.1", 0)
        started.append(under_test)
        return under_test

    yield start  # type: ignore[misc]
    for under_test in started:
        await under_test.server.stop()


async def post(port: int, context: ssl.SSLContext, server_name: str) -> tuple[int, str]:
    """The leader's request, as FleetView makes it: HTTPS to 127.0.0.1, checking the server's name."""
    body = json.dumps({"leader": "replica-a", "grants": {}, "ledger": {}})
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{port}/fleet"
        async with session.post(url, data=body, ssl=context, server_hostname=server_name) as response:
            return response.status, await response.text()


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


async def test_replicas_authenticate_each_other_with_the_certificate_the_chart_generates(
    helm_bin: Path, tmp_path: Path, serve: Callable[[PeerTLS, set[str]], PeerServerUnderTest]
) -> None:
    certificate = chart_certificate(helm_bin)
    install(tmp_path, certificate)  # as the Secret is mounted: ca.crt, tls.crt, tls.key
    files = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    # Both replicas load the same Secret: the server and the client side of one PeerTLS each.
    server = await serve(PeerTLS(*files), {SERVICE_NAME})
    status, text = await post(server.server.port, PeerTLS(*files).client, SERVICE_NAME)
    assert (status, json.loads(text)) == (200, {"replica": "replica-b"})
    assert json.loads(server.posted[0])["leader"] == "replica-a"
    assert server.refused("no_certificate") == server.refused("wrong_identity") == 0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return private_ca(tmp_path_factory.mktemp("pki"))


async def test_a_post_without_the_operators_certificate_is_refused_and_counted(
    pki: PrivateCA,
    tmp_path: Path,
    serve: Callable[[PeerTLS, set[str]], PeerServerUnderTest],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "llmroute.operator.peerport")
    server = await serve(PeerTLS(pki.cert, pki.key, pki.ca), {"127.0.0.1"})
    port = server.server.port
    # No client certificate: 401, and what to present.
    status, text = await post(port, client_context(pki.ca), "127.0.0.1")
    assert status == 401 and "operator's client certificate" in text
    assert (await post(port, client_context(pki.ca), "127.0.0.1"))[0] == 401  # counted, not logged again
    assert server.refused("no_certificate") == 2
    # A certificate from the same CA for someone else (another workload of a shared issuer): 403.
    cert, key = pki.issue(tmp_path / "other", "other", "DNS:other.shop.svc")
    status, text = await post(port, client_context(pki.ca, cert, key), "127.0.0.1")
    assert status == 403 and "names none of the operator replicas (127.0.0.1)" in text
    assert server.refused("wrong_identity") == 1
    # A certificate of another CA, though it names the replicas: the handshake fails.
    stranger = private_ca(tmp_path / "stranger")
    with pytest.raises(aiohttp.ClientError):
        await post(port, client_context(pki.ca, stranger.cert, stranger.key), "127.0.0.1")
    assert server.posted == []  # nothing refused reached the fleet (no grant applied, no report handed out)
    refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused POST /fleet")]
    assert len(refusals) == 2  # one line per reason within a minute
    # The operator's own certificate is taken; a client checks the server's name the same way.
    assert (await post(port, client_context(pki.ca, pki.cert, pki.key), "127.0.0.1"))[0] == 200
    with pytest.raises(aiohttp.ClientError):
        await post(port, client_context(pki.ca, pki.cert, pki.key), "llmroute-replicas.elsewhere.svc")


async def test_a_renewed_certificate_is_presented_without_a_restart(
    pki: PrivateCA, tmp_path: Path, serve: Callable[[PeerTLS, set[str]], PeerServerUnderTest]
) -> None:
    mounted = tmp_path / "mounted"
    install(mounted, {"tls.crt": pki.cert.read_bytes(), "tls.key": pki.key.read_bytes(), "ca.crt": pki.ca.read_bytes()})
    tls = PeerTLS(mounted / "tls.crt", mounted / "tls.key", mounted / "ca.crt")
    server = await serve(tls, {"127.0.0.1"})
    # The Secret is renewed by a new CA (a rotation): the old CA stays trusted, the new pair is presented.
    renewed = private_ca(tmp_path / "renewed")
    install(mounted, {"tls.crt": renewed.cert.read_bytes(), "tls.key": renewed.key.read_bytes()})
    install(mounted, {"ca.crt": renewed.ca.read_bytes()})
    tls.refresh()
    status, _ = await post(server.server.port, client_context(renewed.ca, renewed.cert, renewed.key), "127.0.0.1")
    assert status == 200  # the server presented the renewed certificate and trusts the renewed CA
    status, _ = await post(server.server.port, client_context(renewed.ca, pki.cert, pki.key), "127.0.0.1")
    assert status == 200  # a replica not yet renewed is still taken
