"""A real kube-apiserver and etcd (tests/apiserver/run.sh) for the tests that check what a cluster does.

The binaries are built once per recipe into a cache (tests/apiserver/build.sh; `.ci/run` builds them).
Where they are not built yet the suite is skipped with the command that builds them, except under CI
(CI=true), where a missing build is a failure. One server serves the whole session; since it runs no
controllers, namespaces cannot be deleted, so each test module works in namespaces of its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import yaml

from llmroute.v1 import routes_pb2, rpc
from tests.tools import REPO, helm_bin, kubectl_bin

__all__ = ["ApiServer", "apiserver", "eventually", "helm_bin", "kubectl_bin", "unique"]

HERE = Path(__file__).parent
RELEASE = "llmroute"
OPERATOR_NAMESPACE = "llmroute-system"
START_TIMEOUT_S = 300.0
"""kube-apiserver starts in about 10 s here; a loaded 2-core machine gets wide margins."""


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


def _binaries_built() -> bool:
    """Whether build.sh has the binaries of the current recipe in its cache (it only checks then)."""
    done = subprocess.run(["bash", str(HERE / "build.sh"), "--check"], capture_output=True, text=True)
    return done.returncode == 0


def _wait_for_ready(process: subprocess.Popen[str], timeout: float) -> None:
    """Read run.sh's stdout until it prints `ready`; fail with its output if it exits or stalls."""
    assert process.stdout is not None
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not selector.select(timeout=1.0):
                continue
            line = process.stdout.readline()
            if line.strip() == "ready":
                return
            if not line:
                break
            seen.append(line)
    pytest.fail(f"tests/apiserver/run.sh did not print `ready`:\n{''.join(seen)}")


@pytest.fixture(scope="session")
def apiserver(tmp_path_factory: pytest.TempPathFactory, kubectl_bin: Path, helm_bin: Path) -> Iterator[ApiServer]:
    """A real kube-apiserver + etcd for the session; skipped (CI: failed) when the build is missing."""
    if not _binaries_built():
        reason = "kube-apiserver is not built: run `bash tests/apiserver/build.sh` (see docs/testing.md)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        print(f"\napiserver suite skipped: {reason}")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("apiserver")
    kubeconfig = directory / "kubeconfig"
    env = {**os.environ, "LLMROUTE_APISERVER_LOGS": str(directory / "logs")}
    process = subprocess.Popen(
        ["bash", str(HERE / "run.sh"), str(kubeconfig)],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_ready(process, START_TIMEOUT_S)
        yield ApiServer(kubeconfig, kubectl_bin, helm_bin)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass(frozen=True)
class Release:
    """The chart as installed and then upgraded once, with its TLS Secret as the install left it."""

    installed: subprocess.CompletedProcess[str]
    upgraded: subprocess.CompletedProcess[str]
    tls_after_install: dict[str, bytes]


@pytest.fixture(scope="session")
def release(apiserver: ApiServer) -> Release:
    """The chart installed by `helm install` (CRD included) into llmroute-system with default values,
    then `helm upgrade`d with the same values, as users do.

    Without nodes the operator's pod never runs; tests run the operator as a local process instead.
    """
    chart = str(REPO / "charts" / "llmroute")
    installed = apiserver.helm("install", RELEASE, chart, "--namespace", OPERATOR_NAMESPACE, "--create-namespace")
    tls = apiserver.secret_data(OPERATOR_NAMESPACE, f"{RELEASE}-tls")
    upgraded = apiserver.helm("upgrade", RELEASE, chart, "--namespace", OPERATOR_NAMESPACE)
    return Release(installed, upgraded, tls)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


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


class OperatorProcess:
    """`llmroute operator` as a local process with its ServiceAccount's token, serving the chart's webhook."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path, grpc_port: int, admin_port: int) -> None:
        self.process = process
        self.log = log
        self.grpc_port = grpc_port
        self.admin_port = admin_port

    def ready(self) -> bool:
        assert self.process.poll() is None, f"the operator exited:\n{self.log.read_text()[-3000:]}"
        return http_status(f"http://127.0.0.1:{self.admin_port}/readyz") == 200


@pytest.fixture(scope="session")
def operator(
    apiserver: ApiServer, release: Release, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator for every namespace, with TokenReview auth and the injection webhook of the chart.

    The API server reaches a webhook through its Service; with no cluster network, the chart's
    Service is turned into an ExternalName of a loopback address of this run, where the operator
    serves the webhook with the chart-generated certificate on the Service's port 443.
    """
    directory = tmp_path_factory.mktemp("operator")
    tls = apiserver.secret_data(OPERATOR_NAMESPACE, f"{RELEASE}-tls")
    for name in ("tls.crt", "tls.key"):
        (directory / name).write_bytes(tls[name])
    config = apiserver.get("configmap", "-n", OPERATOR_NAMESPACE, f"{RELEASE}-injection")
    (directory / "injection.json").write_text(config["data"]["config.json"])
    webhook_host = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
    service = apiserver.get("service", "-n", OPERATOR_NAMESPACE, RELEASE)
    ports = [{k: v for k, v in p.items() if k in ("name", "port", "protocol")} for p in service["spec"]["ports"]]
    apiserver.kubectl(
        "patch", "service", RELEASE, "-n", OPERATOR_NAMESPACE, "--type=merge", "-p",
        json.dumps({"spec": {"type": "ExternalName", "externalName": webhook_host, "clusterIP": None,
                             "clusterIPs": None, "selector": None, "ports": ports}}),
    )  # fmt: skip
    grpc_port, admin_port = free_port(), free_port()
    log = directory / "operator.log"
    command = [
        sys.executable, "-m", "llmroute", "operator",
        f"--grpc-listen=127.0.0.1:{grpc_port}", f"--admin-listen=127.0.0.1:{admin_port}",
        f"--injection-config={directory / 'injection.json'}", f"--webhook-listen={webhook_host}:443",
        f"--webhook-cert={directory / 'tls.crt'}", f"--webhook-key={directory / 'tls.key'}",
    ]  # fmt: skip
    # The operator's own identity, so the chart's RBAC is what it is allowed to do.
    kubeconfig = apiserver.kubeconfig_of(OPERATOR_NAMESPACE, RELEASE, directory / "kubeconfig")
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(kubeconfig)}
        )
    running = OperatorProcess(process, log, grpc_port, admin_port)
    try:
        eventually(running.ready, within=120, what="operator readiness")
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def subscribe(port: int, token: str, namespace: str) -> grpc.StatusCode | routes_pb2.RouteResponse:
    """Open StreamRoutes as a sidecar of `namespace` with `token`: the first table, or the refusal's code."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = rpc.stream_routes(channel)(metadata=(("authorization", f"Bearer {token}"),))
        await call.write(routes_pb2.RouteRequest(node=routes_pb2.Node(pod="probe-0", namespace=namespace)))
        try:
            response = await asyncio.wait_for(call.read(), 60)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        call.cancel()
        assert isinstance(response, routes_pb2.RouteResponse)
        return response
