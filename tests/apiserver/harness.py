"""Talking to the real API server of tests/apiserver: kubectl and helm with its kubeconfig, real
ServiceAccount tokens, and a sidecar's first control-plane call; plus the polling and port helpers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml

from llmroute.v1 import routes_pb2, rpc

RELEASE = "llmroute"
OPERATOR_NAMESPACE = "llmroute-system"
SERVICE_NAME = f"{RELEASE}-replicas.{OPERATOR_NAMESPACE}.svc"
"""The operator's name as injected sidecars dial it: what its certificate must carry."""


def unique(prefix: str) -> str:
    """A fresh name (namespaces outlive a test: nothing deletes them without a namespace controller)."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def eventually(check: Callable[[], Any], within: float = 60.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last result {result!r}")
        time.sleep(0.1)


class ApiServer:
    """The running server: its admin kubeconfig, and kubectl and helm pointed at it."""

    def __init__(self, kubeconfig: Path, kubectl: Path, helm: Path) -> None:
        self.kubeconfig = kubeconfig
        self.kubectl_path = kubectl
        self.helm_path = helm

    def env(self) -> dict[str, str]:
        """The environment of a client process of this server (and of no other cluster)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def run(
        self, binary: Path, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a client binary against this server; with `check`, fail showing its stderr."""
        done = subprocess.run(
            [str(binary), *args], input=stdin, capture_output=True, text=True, timeout=120, env=self.env()
        )
        if check:
            assert done.returncode == 0, f"{binary.name} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl against this server."""
        return self.run(self.kubectl_path, *args, stdin=stdin, check=check)

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        """helm against this server."""
        return self.run(self.helm_path, *args)

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed; None when the object does not exist."""
        done = self.kubectl("get", *args, "-o", "json", check=False)
        if done.returncode != 0 and "NotFound" in done.stderr:
            return None
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def apply(self, *objects: dict[str, Any], server_side: bool = False) -> subprocess.CompletedProcess[str]:
        """kubectl apply of these objects."""
        extra = ["--server-side", "--field-manager=test"] if server_side else []
        body = "\n---\n".join(json.dumps(o) for o in objects)
        return self.kubectl("apply", *extra, "-f", "-", stdin=body)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        """A namespace with its `default` ServiceAccount (which the absent controller-manager would add)."""
        self.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}},
        )
        return name

    def token(self, namespace: str, service_account: str, audience: str) -> str:
        """A real signed ServiceAccount token from the TokenRequest API, as a projected volume gets one."""
        audiences = [audience] if audience else []  # none: the API server's own audience
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": audiences, "expirationSeconds": 3600}}  # fmt: skip
        done = self.kubectl(
            "create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
            "-f", "-", stdin=json.dumps(request),
        )  # fmt: skip
        token: str = json.loads(done.stdout)["status"]["token"]
        return token

    def kubeconfig_of(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig at `path` that authenticates as a ServiceAccount, as a pod of it would."""
        config = yaml.safe_load(self.kubeconfig.read_text())
        token = self.token(namespace, service_account, audience="")
        config["users"] = [{"name": service_account, "user": {"token": token}}]
        config["contexts"][0]["context"]["user"] = service_account
        path.write_text(yaml.safe_dump(config))
        return path

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes]:
        """A Secret's decoded data."""
        secret = self.get("secret", "-n", namespace, name)
        return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def http_status(url: str) -> int:
    """The HTTP status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def channel(port: int, ca: bytes | None) -> grpc.aio.Channel:
    """A channel to the operator on `port` as a sidecar opens it: TLS trusting `ca`, for the Service's name."""
    if ca is None:
        return grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    options = [("grpc.ssl_target_name_override", SERVICE_NAME)]
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(ca), options=options)


async def subscribe(
    port: int, token: str, namespace: str, ca: bytes | None
) -> grpc.StatusCode | routes_pb2.RouteResponse:
    """Open StreamRoutes as a sidecar of `namespace` with `token`: the first table, or the refusal's code."""
    async with channel(port, ca) as channel_:
        call = rpc.stream_routes(channel_)(metadata=(("authorization", f"Bearer {token}"),))
        await call.write(routes_pb2.RouteRequest(node=routes_pb2.Node(pod="probe-0", namespace=namespace)))
        try:
            response = await asyncio.wait_for(call.read(), 60)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        call.cancel()
        assert isinstance(response, routes_pb2.RouteResponse)
        return response
