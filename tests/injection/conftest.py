"""The injection webhook served for real: kopf's own HTTPS admission server, with the handler from
llmroute.operator.injection, the certificate and injection config the chart renders, and kopf
talking to kmock's KubernetesEmulator over HTTP for its resource discovery."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kmock
import kopf
import pytest
import yaml

from llmroute.operator.injection import InjectionConfig, configure_webhook_server, register_injection
from tests.tools import REPO, helm_bin

__all__ = ["OPERATOR_NAMESPACE", "Review", "ServedWebhook", "chart_files", "helm_bin", "webhook"]

OPERATOR_NAMESPACE = "llmroute-system"
SERVICE_NAME = f"llmroute.{OPERATOR_NAMESPACE}.svc"
Review = Callable[..., Coroutine[Any, Any, dict[str, Any]]]


@pytest.fixture(scope="session")
def chart_files(helm_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tls.crt, tls.key, ca.crt and config.json exactly as the chart renders them (default values)."""
    out = subprocess.run(
        [str(helm_bin), "template", "llmroute", str(REPO / "charts" / "llmroute"), "-n", OPERATOR_NAMESPACE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    directory = tmp_path_factory.mktemp("chart")
    [secret] = [o for o in objects if o["kind"] == "Secret"]
    for name, value in secret["data"].items():
        (directory / name).write_bytes(base64.b64decode(value))
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-injection")]
    (directory / "config.json").write_text(config["data"]["config.json"])
    return directory


class _UrlCapture:
    """Wraps kopf's WebhookServer to learn the URL it listens on (it picks a free port itself)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.url: concurrent.futures.Future[str] = concurrent.futures.Future()

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async for client_config in self.server(fn):
            if not self.url.done():
                self.url.set_result(str(client_config["url"]))
            yield client_config


class ServedWebhook:
    """Sends AdmissionReviews over HTTPS, verifying the server certificate for the Service's DNS name."""

    def __init__(self, url: str, ca: Path, config: InjectionConfig) -> None:
        self.url = url
        self.config = config
        self.ssl = ssl.create_default_context(cafile=str(ca))

    async def review(self, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
        """The AdmissionReview response for creating `pod` in `namespace`."""
        request = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": str(uuid.uuid4()),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": {**pod, "metadata": {**pod["metadata"], "namespace": namespace}},
                "oldObject": None,
                "dryRun": False,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
            },
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.url}/llmroute-inject", json=request, ssl=self.ssl, server_hostname=SERVICE_NAME
            ) as response,
        ):
            assert response.status == 200, await response.text()
            review: dict[str, Any] = await response.json()
        assert review["response"]["uid"] == request["request"]["uid"]  # type: ignore[index]
        return review

    async def admit(self, pod: dict[str, Any], namespace: str) -> dict[str, Any]:
        """The pod as the API server would store it after this webhook (the JSONPatch applied)."""
        response = (await self.review(pod, namespace))["response"]
        assert response["allowed"] is True
        if "patch" not in response:
            return pod
        assert response["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(response["patch"]))
        patched: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
        return patched


@pytest.fixture()
async def webhook(chart_files: Path) -> AsyncIterator[ServedWebhook]:
    """kopf running only the injection handler, against an emulated API server."""
    config = InjectionConfig.from_file(chart_files / "config.json")
    registry = kopf.OperatorRegistry()
    register_injection(registry, config)
    settings = kopf.OperatorSettings()
    configure_webhook_server(settings, "127.0.0.1:0", chart_files / "tls.crt", chart_files / "tls.key")
    capture = _UrlCapture(settings.admission.server)
    settings.admission.server = capture

    async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s) as api:
        for name, kind, namespaced in [
            ("v1/pods", "Pod", True),
            ("v1/namespaces", "Namespace", False),
            ("v1/events", "Event", True),
            ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", False),
        ]:
            k8s.resources[name] = kmock.ResourceInfo(
                kind=kind,
                namespaced=namespaced,
                verbs={"get", "list", "watch", "create", "patch"},
            )

        server = str(api.url).rstrip("/")

        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server)

        # kopf gets its own thread and loop, as kopf.testing.KopfRunner does: on exit it cancels
        # every task of its loop that it did not start with, which would include the test's own.
        stop = threading.Event()
        thread = threading.Thread(
            target=asyncio.run,
            args=(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    clusterwide=True,
                    standalone=True,
                    stop_flag=stop,
                ),
            ),
            daemon=True,
        )
        thread.start()
        try:
            url = await asyncio.wait_for(asyncio.wrap_future(capture.url), timeout=30)
            yield ServedWebhook(url, chart_files / "ca.crt", config)
        finally:
            stop.set()
            await asyncio.to_thread(thread.join, 20)
            assert not thread.is_alive(), "kopf did not stop"
