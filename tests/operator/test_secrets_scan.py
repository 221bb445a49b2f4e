"""Secrets stay secret, across a whole run: the operator (under the API emulator) resolves keys from a Secret,
real `llmroute sidecar` processes get them over gRPC and use them (a backend that echoes the key back in its
error bodies among them, and a passthrough call with the app's own key), and then everything an operator
could read is scanned for every key: each process's log, the access logs, /metrics and the debug and admin
endpoints, the answers the app got, the trace spans they exported over OTLP, and every object the operator
wrote (status, Events). Each sidecar reaches its backends through an egress proxy with credentials (pproxy: one
pod through SOCKS5, the other through an https:// proxy), and those passwords are scanned for too. Names that every
source shows by design (the routes', the echoing backend's) are scanned for as decoy keys: each source must
show one, which proves that it was captured and searched."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import signal
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from llmroute.http import HTTPServer, Request, Response, StreamingResponse
from llmroute.sim import Behavior, Latency, SimProvider
from llmroute.sim.otlp import Collector
from tests.egress import private_ca
from tests.proxies import pproxy
from tests.sidecar.harness import sidecar_process

if TYPE_CHECKING:
    from conftest import Bench

NAMESPACE = "shop"
ROUTE = "decoy-route-5b1e"
SOLO = "decoy-solo-8d04"
ECHO = "decoy-echo-c37a"
PODS = ("decoy-pod-a1", "decoy-pod-b2")
DECOYS = (ROUTE, SOLO, ECHO, *PODS)
"""Names that nearly every source shows by design: decoy keys that a source not captured or not scanned would miss."""
NAMELESS = (
    "/healthz",
    "/readyz",
    "operator /metrics",
    "operator /fleet",
    "Namespace",
    "Lease",
    "CustomResourceDefinition",
)
"""Sources that name none of them (by design): they must not be empty instead."""
KEYS = {"echo": "sk-live-ECHOED-key-0f4c1d", "backup": "sk-live-BACKUP-key-93ab27"}
APP_KEY = "sk-app-OWN-key-d2e8a6"
"""The app's own key: relayed to the passthrough upstream, never logged."""
PROXY_PASSWORDS = {PODS[0]: "pw-SOCKS-egress-7c1e90", PODS[1]: "pw-HTTPS-egress-4b2d58"}
"""Each pod's egress proxy password (in the URL of its HTTP_PROXY), never logged."""


FRAGMENT = 12
"""A key is found when any FRAGMENT characters of it are: a message cut short can end in the middle of it."""


def leaks(sources: Mapping[str, str], secrets: Iterable[str]) -> dict[str, set[str]]:
    """For each secret, the sources that contain it (or FRAGMENT characters of it) as is, or all of it
    base64-encoded (a Secret's own encoding)."""
    found: dict[str, set[str]] = {}
    for secret in secrets:
        size = min(FRAGMENT, len(secret))
        forms = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        forms.add(base64.b64encode(secret.encode()).decode())
        where = {name for name, text in sources.items() if any(form in text for form in forms)}
        if where:
            found[secret] = where
    return found


def test_the_scanner_finds_a_planted_key() -> None:
    key, cut, short = KEYS["echo"], KEYS["backup"], "sk-2"
    sources = {
        "clean": f"nothing here but {key[: FRAGMENT - 1]}",
        "log": f"x {key} y",
        "status": base64.b64encode(short.encode()).decode(),
        "answer": f"...{cut[:FRAGMENT]}",
    }
    found = leaks(sources, [key, cut, short, "sk-absent"])
    assert found == {key: {"log"}, cut: {"answer"}, short: {"status"}}


class EchoBackend:
    """An OpenAI-compatible backend that quotes the key it was sent in every error, as some providers and proxies
    do: a 400 (returned to the app as is) when the prompt says "please fail", a stream that breaks off with an
    error event when it says "stream then fail", else a 401 (the sidecar fails over)."""

    def __init__(self) -> None:
        self.server = HTTPServer(self.handle)
        self.calls = 0

    async def handle(self, request: Request) -> Response | StreamingResponse:
        self.calls += 1
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        # Long enough that the sidecar's 300-character cut of a message falls inside the key.
        lead = "Your request was refused: the API key is not valid for this project."
        message = f"{lead:<256}Incorrect API key provided: {sent}. You can find your API key at https://example.com."
        error = {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}
        if b"stream then fail" in request.body:
            return StreamingResponse(200, _broken_stream(error), [("x-echo", sent)])
        status = 400 if b"please fail" in request.body else 401
        return Response(status, json.dumps({"error": error}).encode(), [("x-echo", sent)])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1"


async def _broken_stream(error: dict[str, Any]) -> AsyncIterator[bytes]:
    delta = {"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": [delta]}
    yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield f"data: {json.dumps({'error': error})}\n\n".encode()


def _backend(name: str, url: str, key: str) -> dict[str, Any]:
    ref = {"name": "llm-keys", "key": key}
    return {"name": name, "provider": "openai", "url": url, "model": f"{name}-model", "apiKeySecretRef": ref}


def _ask(model: str, prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def _app_calls(port: int) -> list[str]:
    """What an app does through a sidecar; returns the answers it got (scanned too)."""
    headers = {"authorization": f"Bearer {APP_KEY}", "x-request-id": "req-1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", headers=headers, timeout=30) as http:

        async def stream(body: dict[str, Any]) -> str:
            async with http.stream("POST", "/chat/completions", json=body) as response:
                return (await response.aread()).decode()

        ok = await http.post("/chat/completions", json=_ask("chat"))  # the echo refuses (401), backup answers
        assert ok.status_code == 200 and ok.headers["x-llmroute-backend"] == "backup"
        streamed = await stream(_ask("chat", stream=True))
        relayed = await http.post("/chat/completions", json=_ask("chat", "please fail"))
        assert relayed.status_code == 400  # the echoing backend's own 400, relayed to the app
        refused = await http.post("/chat/completions", json=_ask("solo"))
        assert refused.status_code == 503  # names each backend and its last error
        broken = await stream(_ask("solo", "stream then fail", stream=True))
        passed = await http.post("/chat/completions", json=_ask("unrouted-model"))
        assert passed.status_code == 200
    for answer in (relayed.text, refused.text, broken):
        assert "Incorrect API key provided: ***" in answer  # what the echo said reached the app, key masked
    answers = [streamed, broken]
    for response in (ok, relayed, refused, passed):
        answers += [response.text, json.dumps(dict(response.headers))]
    return answers


async def _emulator_objects(bench: Bench) -> dict[str, str]:
    """Every object the emulator holds, but the Secrets (whose data is the keys, by design), by kind (kinds with
    no object, such as LLMPolicy in this test, have nothing to scan)."""
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
    return {f"emulator {kind}": json.dumps(items) for kind, items in objects.items() if items}  # none: no leak


async def test_no_key_in_any_log_metric_endpoint_event_or_status(
    bench: Bench, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)  # the operator runs in this process: its log (kopf's too) at debug
    collector = Collector()  # the sidecars trace every request and export the spans here
    await collector.start()
    # By name, which the sidecars' NO_PROXY lists: their OTLP exporter honours HTTP_PROXY too.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.replace("127.0.0.1", "localhost"))
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    assert bench.operator is not None
    echo, backup = EchoBackend(), SimProvider("backup", "openai", Behavior(latency=Latency.fixed(0.01)), seed=1)
    upstream = SimProvider("upstream", "openai", Behavior(latency=Latency.fixed(0.01)), seed=2)
    await echo.server.start("127.0.0.1", 0)
    await backup.start()
    await upstream.start()
    # The backup key is missing at first: the route's status and an Event say so (naming the Secret, not a key).
    await bench.kube.put_secret(NAMESPACE, "llm-keys", {"echo": KEYS["echo"]})
    chat = [_backend(ECHO, echo.url, "echo"), _backend("backup", backup.url, "backup")]
    await bench.kube.apply_route(NAMESPACE, ROUTE, {"models": ["chat"], "strategy": "ordered", "backends": chat})
    await bench.kube.apply_route(NAMESPACE, SOLO, {"models": ["solo"], "backends": [_backend(ECHO, echo.url, "echo")]})

    async def missing_key() -> bool:
        return any(e["reason"] == "KeyNotFound" for e in await bench.kube.events(NAMESPACE))

    await bench.eventually(missing_key, what="the KeyNotFound Event")
    await bench.kube.put_secret(NAMESPACE, "llm-keys", KEYS)
    sources: dict[str, str] = {}
    pki = private_ca(tmp_path / "pki")
    proxied: dict[str, list[str]] = {}
    try:
        for pod, scheme in zip(PODS, ("socks5", "http"), strict=True):
            password = PROXY_PASSWORDS[pod]
            token = tmp_path / f"{pod}.token"
            token.write_text(f"token-{pod}")
            bench.cluster.tokens[f"token-{pod}"] = f"system:serviceaccount:{NAMESPACE}:default"
            argv = [
                f"--control-plane=127.0.0.1:{bench.operator.grpc_port}",
                f"--namespace={NAMESPACE}", f"--pod-name={pod}", "--labels=app=shop",
                f"--token-file={token}", f"--state-dir={tmp_path / pod}", "--log-level=debug",
                f"--passthrough=openai={upstream.url}", "--plaintext", f"--ca-bundle={pki.ca}",
            ]  # fmt: skip
            access_log = tmp_path / f"{pod}.access.log"
            tls = pki if scheme == "http" else None
            with access_log.open("wb") as stdout:
                async with (
                    pproxy(tmp_path, scheme, credentials=f"egress:{password}", tls=tls, host="localhost") as proxy,
                    sidecar_process(
                        *argv,
                        stdout=stdout,
                        env={"HTTP_PROXY": proxy.url.replace("socks5:", "socks5h:"), "NO_PROXY": "localhost"},
                    ) as (process, port, admin, startup),
                ):
                    await _until_ready(admin)
                    answers = await _app_calls(port)
                    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin}", timeout=10) as http:
                        for page in ("/metrics", "/debug/routes", "/debug/backends", "/healthz", "/readyz"):
                            sources[f"{pod} {page}"] = (await http.get(page)).text
                    process.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(process.wait, 30) == 0
                    assert process.stderr is not None
                    sources[f"{pod} log"] = startup + process.stderr.read()
            proxied[pod] = proxy.destinations()
            sources[f"{pod} access log"] = access_log.read_text()
            sources[f"{pod} answers"] = "\n".join(answers)
        assert echo.calls >= 10 and upstream.stats.last_headers["authorization"] == f"Bearer {APP_KEY}"
        for pod in PODS:  # every backend and the passthrough upstream were reached through the pod's proxy
            assert {f"127.0.0.1:{p}" for p in (echo.server.port, backup.port, upstream.port)} <= set(proxied[pod])
        assert backup.stats.last_headers["authorization"] == f"Bearer {KEYS['backup']}"  # the keys were used
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bench.operator.admin_port}") as http:
            for page in ("/metrics", "/fleet", "/healthz", "/readyz"):
                sources[f"operator {page}"] = (await http.get(page)).text
        records = [r for r in caplog.records if r.name.startswith(("llmroute", "kopf"))]  # not the test's own
        sources["operator log"] = "\n".join(f"{r.name} {r.levelname} {r.getMessage()}" for r in records)
        sources |= await _emulator_objects(bench)
        assert collector.spans, "the sidecars exported no span"
        spans = [span.to_json() | {"resource": span.resource} for span in collector.spans]
        sources["exported spans"] = json.dumps(spans) + "".join(b.decode("latin-1") for b in collector.bodies)
    finally:
        await collector.stop()
        await echo.server.shutdown(1)
        await backup.stop()
        await upstream.stop()

    found = leaks(sources, [*KEYS.values(), APP_KEY, *PROXY_PASSWORDS.values(), *DECOYS])
    decoys = set().union(*(found.pop(decoy, set()) for decoy in DECOYS))
    nameless = {name for name in sources if name.endswith(NAMELESS)}
    assert decoys == set(sources) - nameless, "a source was not captured, or not scanned"
    assert all(sources[name].strip() for name in nameless)
    assert found == {}, f"keys found in {found}"


async def _until_ready(admin: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            if (await http.get(f"http://127.0.0.1:{admin}/readyz")).status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the sidecar never received its routing table")
