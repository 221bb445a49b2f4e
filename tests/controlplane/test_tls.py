"""The control plane over TLS with the certificate the chart generates, over real gRPC: a sidecar gets
its routes, refuses a server whose certificate names another host, and follows a CA rotation."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest
import yaml
from prometheus_client import CollectorRegistry

from llmroute.model import RoutingTable
from llmroute.operator.auth import TokenReviewAuthenticator
from llmroute.operator.controlplane import ControlPlane
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.routes.controlplane import ControlPlaneClient, NodeInfo
from llmroute.v1 import routes_pb2, rpc
from tests.tools import REPO, helm_bin

from .conftest import eventually, make_route, token_review

__all__ = ["helm_bin"]

CHART = REPO / "charts" / "llmroute"
SERVICE_NAME = "llmroute-replicas.llmroute-system.svc"
"""The name injected sidecars dial, and one the chart's certificate carries."""

Certificate = dict[str, bytes]  # ca.crt, tls.crt, tls.key
WAIT = 30.0
"""A wide margin for what happens in well under a second on an idle machine (other builds share this one)."""


def chart_certificate(helm: Path, *values: str) -> Certificate:
    """The CA and serving certificate `helm template` generates (a new CA each time), as the Secret holds them."""
    out = subprocess.run(
        [str(helm), "template", "llmroute", str(CHART), "--namespace", "llmroute-system",
         "--show-only", "templates/webhook.yaml", *(f"--set={v}" for v in values)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [secret] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Secret"]
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def install(directory: Path, files: dict[str, bytes]) -> None:
    """Put files in place the way the kubelet updates a mounted volume: each appears whole, at once."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / f".{name}.new").write_bytes(data)
        os.replace(directory / f".{name}.new", directory / name)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-shop\n")
    return path


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[Certificate], asyncio.Future[ControlPlane]]]:
    """Start a control plane serving a certificate from files in tmp_path/server (as the operator's mount)."""
    planes: list[ControlPlane] = []

    async def start(certificate: Certificate) -> ControlPlane:
        directory = tmp_path / "server"
        install(directory, {"tls.crt": certificate["tls.crt"], "tls.key": certificate["tls.key"]})
        plane = ControlPlane(
            authenticator=TokenReviewAuthenticator(token_review), report_interval=0.1, registry=CollectorRegistry()
        )
        await plane.start("127.0.0.1:0", tls_cert=directory / "tls.crt", tls_key=directory / "tls.key")
        plane.publish("shop", [make_route("shop", "chat", key="sk-shop")])
        planes.append(plane)
        return plane

    yield start  # type: ignore[misc]
    for plane in planes:
        await plane.stop(0)


class Sidecar:
    """A control-plane client as `llmroute sidecar --tls-ca FILE` runs it, keeping what it applied."""

    def __init__(self, address: str, token_file: Path, ca_file: Path, server_name: str | None = None) -> None:
        self.applied: list[RoutingTable] = []
        self.client = ControlPlaneClient(
            address,
            NodeInfo(pod="web-1", namespace="shop"),
            token_file=token_file,
            state_dir=None,
            tls_ca=ca_file,
            server_name=server_name,
            apply=self.applied.append,
            load=LoadRecorder(),
            backoff_min=0.05,
            backoff_max=0.2,
            trust_poll=0.05,
        )
        self.task = asyncio.create_task(self.client.run())

    def models(self) -> list[list[str]]:
        """The model names of each table applied, in order."""
        return [table.models for table in self.applied]

    async def stop(self) -> None:
        await self.client.stop()
        await self.task


WRONG_NAME = "Hostname Verification Check failed"
UNKNOWN_CA = "CERTIFICATE_VERIFY_FAILED"


def handshake_failures(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    """The sidecar's warnings about dials that failed for `reason` (gRPC's words for it)."""
    return [r.getMessage() for r in caplog.records if "UNAVAILABLE" in r.getMessage() and reason in r.getMessage()]


async def test_a_sidecar_gets_its_routes_and_keys_over_tls_with_the_chart_certificate(
    helm_bin: Path, serve: Callable[[Certificate], asyncio.Future[ControlPlane]], token_file: Path, tmp_path: Path
) -> None:
    # The chart names the operator's Services; with the release named "localhost" one of them is localhost.
    certificate = chart_certificate(helm_bin, "fullnameOverride=localhost")
    plane = await serve(certificate)
    install(tmp_path / "ca", {"ca.crt": certificate["ca.crt"]})
    sidecar = Sidecar(f"localhost:{plane.port}", token_file, tmp_path / "ca" / "ca.crt")
    try:
        await eventually(lambda: plane.route_sidecars("shop", "chat").programmed == 1, within=WAIT)
        [table] = sidecar.applied
        [route] = table.routes
        assert route.backends[0].api_key is not None and route.backends[0].api_key.reveal() == "sk-shop"
        # The port speaks only TLS: a plaintext client gets nothing.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            call = rpc.stream_routes(channel)(None, metadata=(("authorization", "Bearer token-shop"),))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.write(routes_pb2.RouteRequest(node=routes_pb2.Node(pod="web-2", namespace="shop")))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await sidecar.stop()


async def test_a_sidecar_refuses_an_operator_whose_certificate_names_another_host(
    helm_bin: Path,
    serve: Callable[[Certificate], asyncio.Future[ControlPlane]],
    token_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    certificate = chart_certificate(helm_bin)  # names llmroute*.llmroute-system.svc, not localhost
    plane = await serve(certificate)
    install(tmp_path / "ca", {"ca.crt": certificate["ca.crt"]})
    refusing = Sidecar(f"localhost:{plane.port}", token_file, tmp_path / "ca" / "ca.crt")
    try:
        await eventually(lambda: len(handshake_failures(caplog, WRONG_NAME)) >= 3, within=30)
        assert refusing.applied == [] and not refusing.client.connected
        assert WRONG_NAME in refusing.client.last_error
        assert plane.route_sidecars("shop", "chat").programmed == 0
    finally:
        await refusing.stop()
    # The same CA and server, checked against a name the certificate carries: accepted.
    named = Sidecar(f"127.0.0.1:{plane.port}", token_file, tmp_path / "ca" / "ca.crt", server_name=SERVICE_NAME)
    try:
        await eventually(lambda: plane.route_sidecars("shop", "chat").programmed == 1, within=WAIT)
    finally:
        await named.stop()


async def test_a_sidecar_refuses_an_operator_signed_by_another_ca(
    helm_bin: Path, serve: Callable[[Certificate], asyncio.Future[ControlPlane]], token_file: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.WARNING)
    plane = await serve(chart_certificate(helm_bin, "fullnameOverride=localhost"))
    other = chart_certificate(helm_bin, "fullnameOverride=localhost")  # same names, another CA
    install(tmp_path / "ca", {"ca.crt": other["ca.crt"]})
    sidecar = Sidecar(f"localhost:{plane.port}", token_file, tmp_path / "ca" / "ca.crt")
    try:
        await eventually(lambda: len(handshake_failures(caplog, UNKNOWN_CA)) >= 3, within=30)
        assert sidecar.applied == [] and plane.route_sidecars("shop", "chat").programmed == 0
    finally:
        await sidecar.stop()


async def test_a_sidecar_waits_for_its_ca_file_and_dials_once_it_appears(
    helm_bin: Path,
    serve: Callable[[Certificate], asyncio.Future[ControlPlane]],
    token_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    certificate = chart_certificate(helm_bin, "fullnameOverride=localhost")
    plane = await serve(certificate)
    # A pod created before the operator wrote its namespace's CA ConfigMap: the optional volume is empty.
    sidecar = Sidecar(f"localhost:{plane.port}", token_file, tmp_path / "ca" / "ca.crt")
    try:
        await eventually(
            lambda: any("cannot read the CA bundle" in r.getMessage() for r in caplog.records), within=WAIT
        )
        assert sidecar.applied == []
        install(tmp_path / "ca", {"ca.crt": certificate["ca.crt"]})  # the kubelet delivers it
        await eventually(lambda: plane.route_sidecars("shop", "chat").programmed == 1, within=WAIT)
    finally:
        await sidecar.stop()


async def test_a_rotated_certificate_and_ca_reach_a_running_sidecar_without_restarts(
    helm_bin: Path,
    serve: Callable[[Certificate], asyncio.Future[ControlPlane]],
    token_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    old = chart_certificate(helm_bin, "fullnameOverride=localhost")
    new = chart_certificate(helm_bin, "fullnameOverride=localhost")
    assert old["ca.crt"] != new["ca.crt"]
    plane = await serve(old)
    ca_dir = tmp_path / "ca"
    install(ca_dir, {"ca.crt": old["ca.crt"]})
    sidecar = Sidecar(f"localhost:{plane.port}", token_file, ca_dir / "ca.crt")
    try:
        await eventually(lambda: sidecar.client.connected and sidecar.models() == [["chat"]], within=WAIT)
        # The Secret is renewed: the operator's mount gets the new pair, the namespace's ConfigMap the new
        # CA followed by the old one (the operator keeps it for the overlap).
        install(tmp_path / "server", {"tls.key": new["tls.key"], "tls.crt": new["tls.crt"]})
        install(ca_dir, {"ca.crt": new["ca.crt"] + old["ca.crt"]})
        await eventually(lambda: any("changed: reconnecting" in r.getMessage() for r in caplog.records), within=WAIT)
        await eventually(lambda: sidecar.client.connected, within=WAIT)
        plane.publish("shop", [make_route("shop", "chat", models=("chat", "chat-2"), generation=2, key="sk-2")])
        await eventually(lambda: sidecar.models()[-1] == ["chat", "chat-2"], within=WAIT)
        # The server took the new certificate without a restart: a client trusting only the old CA is refused.
        install(tmp_path / "old-ca", {"ca.crt": old["ca.crt"]})
        stale = Sidecar(f"localhost:{plane.port}", token_file, tmp_path / "old-ca" / "ca.crt")
        try:
            await eventually(lambda: len(handshake_failures(caplog, UNKNOWN_CA)) >= 2, within=30)
            assert stale.applied == []
        finally:
            await stale.stop()
        # The overlap ends (the ConfigMap keeps only the new CA): the sidecar reconnects, and stays connected.
        reconnects = sum("changed: reconnecting" in r.getMessage() for r in caplog.records)
        install(ca_dir, {"ca.crt": new["ca.crt"]})
        await eventually(
            lambda: sum("changed: reconnecting" in r.getMessage() for r in caplog.records) > reconnects, within=WAIT
        )
        await eventually(lambda: sidecar.client.connected, within=WAIT)
        plane.publish("shop", [make_route("shop", "chat", models=("chat",), generation=3, key="sk-3")])
        await eventually(lambda: sidecar.models()[-1] == ["chat"], within=WAIT)
    finally:
        await sidecar.stop()
