"""Secrets stay secret, across a whole run: the operator (under the API emulator) resolves keys from a Secret,
real `llmroute sidecar` processes get them over gRPC and use them (a backend that echoes the key back in its
error bodies among them, and a passthrough call with the app's own key), and then everything an operator
could read is scanned for every key: each process's log, the access logs, /metrics and the debug and admin
endpoints, the answers the app got, and every object the operator wrote (status, Events). The route's name
is planted in the scan as a decoy key: it must be found in every source, which proves each one was captured
and searched."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from llmroute.http import HTTPServer, Request, Response
from llmroute.sim import Behavior, Latency, SimProvider
from tests.sidecar.harness import sidecar_process

if TYPE_CHECKING:
    from conftest import Bench

NAMESPACE = "shop"
ROUTE = "decoy-route-5b1e"
"""The route's name: in every source by design, so it stands for a key a broken capture would miss."""
KEYS = {"echo": "sk-live-ECHOED-key-0f4c1d", "backup": "sk-live-BACKUP-key-93ab27"}
APP_KEY = "sk-app-OWN-key-d2e8a6"
"""The app's own key: relayed to the passthrough upstream, never logged."""


def leaks(sources: Mapping[str, str], secrets: Iterable[str]) -> dict[str, set[str]]:
    """For each secret, the sources that contain it as is or base64-encoded (a Secret's own encoding)."""
    found: dict[str, set[str]] = {}
    for secret in secrets:
        forms = (secret, base64.b64encode(secret.encode()).decode())
        where = {name for name, text in sources.items() if any(form in text for form in forms)}
        if where:
            found[secret] = where
    return found


def test_the_scanner_finds_a_planted_key() -> None:
    sources = {"clean": "nothing here", "log": f"x {KEYS['echo']} y", "status": base64.b64encode(b"sk-2").decode()}
    assert leaks(sources, [KEYS["echo"], "sk-2", "sk-absent"]) == {KEYS["echo"]: {"log"}, "sk-2": {"status"}}


class EchoBackend:
    """An OpenAI-compatible backend that refuses every call and quotes the key it was sent in its error body,
    as some providers and proxies do: a 400 (returned to the app) when the prompt asks for one, else a 401."""

    def __init__(self) -> None:
        self.server = HTTPServer(self.handle)
        self.calls = 0

    async def handle(self, request: Request) -> Response:
        self.calls += 1
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        status = 400 if b"please fail" in request.body else 401
        message = f"Incorrect API key provided: {sent}. You can find your API key at https://example.com."
        body = {"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}}
        return Response(status, json.dumps(body).encode(), [("x-echo", sent)])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1"


def _spec(echo: EchoBackend, backup: SimProvider) -> dict[str, Any]:
    def backend(name: str, url: str, key: str) -> dict[str, Any]:
        ref = {"name": "llm-keys", "key": key}
        return {"name": name, "provider": "openai", "url": url, "model": f"{name}-model", "apiKeySecretRef": ref}

    return {
        "models": ["chat", "solo"],
        "strategy": "ordered",
        "backends": [backend("echo", echo.url, "echo"), backend("backup", backup.url, "backup")],
    }


async def _app_calls(port: int) -> list[str]:
    """What an app does through a sidecar; returns the answers it got (scanned too)."""
    answers = []
    headers = {"authorization": f"Bearer {APP_KEY}", "x-request-id": "req-1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", headers=headers, timeout=30) as http:
        ask = {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}
        ok = await http.post("/chat/completions", json=ask)  # echo refuses (401), backup answers
        assert ok.status_code == 200 and ok.headers["x-llmroute-backend"] == "backup"
        async with http.stream("POST", "/chat/completions", json={**ask, "stream": True}) as stream:
            answers.append((await stream.aread()).decode())
        relayed = await http.post(
            "/chat/completions", json={**ask, "messages": [{"role": "user", "content": "please fail"}]}
        )
        assert relayed.status_code == 400  # the echoing backend's own 400, relayed to the app
        assert "Incorrect API key provided" in relayed.text
        passed = await http.post("/chat/completions", json={**ask, "model": "unrouted-model"})
        assert passed.status_code == 200
        answers += [ok.text, json.dumps(dict(ok.headers)), relayed.text, json.dumps(dict(relayed.headers)), passed.text]
    return answers


async def _emulator_objects(bench: Bench) -> dict[str, str]:
    """Every object the emulator holds, but the Secrets (whose data is the keys, by design), by kind."""
    objects: dict[str, list[Any]] = {}
    for resource, info in bench.cluster.resources.items():
        if info.kind == "Secret" or "list" not in (info.verbs or ()):
            continue
        base = f"/api/{resource.version}" if not resource.group else f"/apis/{resource.group}/{resource.version}"
        paths = [f"{base}/namespaces/{ns}/{resource.plural}" for ns in ("default", NAMESPACE)]
        if not info.namespaced:
            paths = [f"{base}/{resource.plural}"]
        for path in paths:
            objects.setdefault(info.kind, []).extend((await bench.kube.call("GET", path))["items"])
    return {f"emulator {kind}": json.dumps(items) for kind, items in objects.items()}


async def test_no_key_in_any_log_metric_endpoint_event_or_status(
    bench: Bench, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the operator runs in this process: its log (kopf's too) at debug
    assert bench.operator is not None
    echo, backup = EchoBackend(), SimProvider("backup", "openai", Behavior(latency=Latency.fixed(0.01)), seed=1)
    upstream = SimProvider("upstream", "openai", Behavior(latency=Latency.fixed(0.01)), seed=2)
    await echo.server.start("127.0.0.1", 0)
    await backup.start()
    await upstream.start()
    await bench.kube.put_secret(NAMESPACE, "llm-keys", KEYS)
    await bench.kube.apply_route(NAMESPACE, ROUTE, _spec(echo, backup))
    sources: dict[str, str] = {}
    try:
        for pod in ("app-0", "app-1"):
            token = tmp_path / f"{pod}.token"
            token.write_text(f"token-{pod}")
            bench.cluster.tokens[f"token-{pod}"] = f"system:serviceaccount:{NAMESPACE}:default"
            argv = [
                f"--control-plane=127.0.0.1:{bench.operator.grpc_port}",
                f"--namespace={NAMESPACE}", f"--pod-name={pod}", "--labels=app=shop",
                f"--token-file={token}", f"--state-dir={tmp_path / pod}", "--log-level=debug",
                f"--passthrough=openai={upstream.url}",
            ]  # fmt: skip
            access_log = tmp_path / f"{pod}.access.log"
            with access_log.open("wb") as stdout:
                async with sidecar_process(*argv, stdout=stdout) as (process, port, admin, startup):
                    await _until_ready(admin)
                    answers = await _app_calls(port)
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=10) as http:
                        for page in ("/metrics", "/debug/routes", "/debug/backends", "/healthz", "/readyz"):
                            sources[f"{pod} {page}"] = (await http.get(page)).text
                    process.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(process.wait, 30) == 0
                    assert process.stderr is not None
                    sources[f"{pod} log"] = startup + process.stderr.read()
            sources[f"{pod} access log"] = access_log.read_text()
            sources[f"{pod} answers"] = "\n".join(answers)
        assert echo.calls >= 6 and upstream.stats.last_headers["authorization"] == f"Bearer {APP_KEY}"
        assert backup.stats.last_headers["authorization"] == f"Bearer {KEYS['backup']}"  # the keys were used
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bench.operator.admin_port}") as http:
            for page in ("/metrics", "/fleet", "/healthz", "/readyz"):
                sources[f"operator {page}"] = (await http.get(page)).text
        sources["operator log"] = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records)
        sources |= await _emulator_objects(bench)
    finally:
        await echo.server.shutdown(1)
        await backup.stop()
        await upstream.stop()

    Path("/tmp/alog-bench/sources.json").write_text(json.dumps(sources, indent=1))
    found = leaks(sources, [*KEYS.values(), APP_KEY, ROUTE])
    assert found.pop(ROUTE) >= {
        *(f"app-{i} {where}" for i in (0, 1) for where in ("log", "access log", "/metrics", "/debug/routes")),
        "operator log",
        "emulator LLMRoute",
        "emulator Event",
    }
    assert found == {}, f"keys found in {found}"


async def _until_ready(admin: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if (await http.get(f"http://127.0.0.1:{admin}/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the sidecar never received its routing table")
