"""The sidecar in control-plane mode against the real gRPC control plane: routes arrive, survive the
operator's absence and a restart from --state-dir, and load reports come back as backend health."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from llmroute.model import parse_document
from llmroute.operator.auth import InsecureAuthenticator
from llmroute.operator.controlplane import ControlPlane
from llmroute.sidecar.main import Sidecar
from llmroute.sim import Behavior, Latency, SimProvider

from .harness import backend_entry, chat_body, route_doc, sidecar_running


def sidecar(address: str, state_dir: Path) -> AbstractAsyncContextManager[Sidecar]:
    return sidecar_running(
        ["--control-plane", address, "--namespace", "default", "--pod-name", "app-1", "--labels", "app=shop",
         "--state-dir", str(state_dir), "--drain-timeout", "1", "--plaintext"]
    )  # fmt: skip


async def wait_until_ready(admin_port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(100):
            if (await http.get(f"http://127.0.0.1:{admin_port}/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("sidecar never became ready")


async def test_routes_arrive_survive_the_operator_and_restarts(tmp_path: Path) -> None:
    backend = SimProvider("sim", "openai", Behavior(latency=Latency.fixed(0.01)))
    await backend.start()
    plane = ControlPlane(authenticator=InsecureAuthenticator(), report_interval=0.2)
    await plane.start("127.0.0.1:0")
    route = parse_document(route_doc({"models": ["chat"], "backends": [backend_entry("sim", backend)]}))
    plane.publish("default", [route])
    address = f"127.0.0.1:{plane.port}"
    try:
        async with sidecar(address, tmp_path / "state") as first:
            await wait_until_ready(first.admin_server.port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{first.app_server.port}/v1") as http:
                assert (await http.post("/chat/completions", json=chat_body())).status_code == 200
                # The sidecar reports load; the control plane turns it into the route's backend health.
                for _ in range(50):
                    health = plane.backend_health("default", "chat")
                    if health and health[0].requests_per_minute > 0:
                        break
                    await asyncio.sleep(0.1)
                assert health[0].name == "sim" and health[0].healthy and health[0].requests_per_minute > 0
                assert plane.route_sidecars("default", "chat").programmed == 1
                # The operator goes away under load: the sidecar keeps routing on its last table.
                statuses: list[int] = []
                stop = asyncio.Event()

                async def load() -> None:
                    while not stop.is_set():
                        statuses.append((await http.post("/chat/completions", json=chat_body())).status_code)

                workers = [asyncio.create_task(load()) for _ in range(4)]
                await asyncio.sleep(0.3)
                await plane.stop(0)
                await asyncio.sleep(0.5)
                stop.set()
                await asyncio.gather(*workers)
                assert len(statuses) > 20 and set(statuses) == {200}
        # A restart while the operator is still away serves the table kept in --state-dir.
        async with sidecar(address, tmp_path / "state") as second:
            await wait_until_ready(second.admin_server.port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{second.app_server.port}/v1") as http:
                assert (await http.post("/chat/completions", json=chat_body())).status_code == 200
    finally:
        await plane.stop(0)
        await backend.stop()


async def test_plaintext_on_either_side_is_a_warning_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    plane = ControlPlane(authenticator=InsecureAuthenticator(), report_interval=0.2, registry=CollectorRegistry())
    await plane.start("127.0.0.1:0")
    plane.publish("default", [])
    try:
        async with sidecar(f"127.0.0.1:{plane.port}", tmp_path / "state") as running:
            await wait_until_ready(running.admin_server.port)
    finally:
        await plane.stop(0)
    warned = {r.name for r in caplog.records if r.levelno == logging.WARNING and "PLAINTEXT" in r.getMessage()}
    assert warned == {"llmroute.operator.controlplane", "llmroute.sidecar.routes.controlplane"}


async def test_readyz_says_why_the_operator_is_not_reached(tmp_path: Path) -> None:
    # Injected before the operator wrote the namespace's CA: the mounted file is not there yet.
    args = ["--control-plane", "127.0.0.1:9", "--namespace", "default", "--pod-name", "app-1",
            "--tls-ca", str(tmp_path / "ca" / "ca.crt"), "--drain-timeout", "1"]  # fmt: skip
    async with sidecar_running(args) as running, httpx.AsyncClient() as http:
        for _ in range(100):
            answer = (await http.get(f"http://127.0.0.1:{running.admin_server.port}/readyz")).json()
            if "cannot read the CA bundle" in json.dumps(answer):
                break
            await asyncio.sleep(0.05)
    assert answer["status"] == "no routing table loaded yet"
    [problem] = answer["problems"]["control-plane"]
    assert f"cannot read the CA bundle {tmp_path / 'ca' / 'ca.crt'}" in problem
