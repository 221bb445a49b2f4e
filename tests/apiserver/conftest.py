"""A real kube-apiserver and etcd (tests/apiserver/run.sh) for the tests that check what a cluster does.

The binaries are built once per recipe into a cache (tests/apiserver/build.sh; `.ci/run` builds them).
Where they are not built yet the suite is skipped with the command that builds them, except under CI
(CI=true), where a missing build is a failure. One server serves the whole session; since it runs no
controllers, namespaces cannot be deleted, so each test module works in namespaces of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apiserver.harness import (
    OPERATOR_NAMESPACE,
    RELEASE,
    SERVICE_NAME,
    ApiServer,
    eventually,
    http_status,
)
from tests.ports import free_port
from tests.tools import REPO, helm_bin, kubectl_bin

__all__ = [
    "OperatorProcess",
    "Release",
    "apiserver",
    "chart_tls_args",
    "helm_bin",
    "kubectl_bin",
    "operator",
    "release",
    "running_operator",
]

HERE = Path(__file__).parent
START_TIMEOUT_S = 300.0
"""kube-apiserver starts in about 10 s here; a loaded 2-core machine gets wide margins."""


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


class OperatorProcess:
    """`llmroute operator` as a local process with its ServiceAccount's token, serving the chart's webhook."""

    def __init__(
        self, process: subprocess.Popen[bytes], log: Path, grpc_port: int, admin_port: int, ca_file: Path | None
    ) -> None:
        self.process = process
        self.log = log
        self.grpc_port = grpc_port
        self.admin_port = admin_port
        self.ca_file = ca_file
        """Its --tls-ca: the CA its control-plane certificate chains to, which it publishes (None: plaintext)."""

    @property
    def ca(self) -> bytes | None:
        return self.ca_file.read_bytes() if self.ca_file is not None else None

    def sidecar_flags(self, directory: Path) -> list[str]:
        """What `llmroute sidecar` needs to dial this operator as an injected sidecar would (the CA in `directory`)."""
        if self.ca is None:
            return ["--plaintext"]
        (directory / "ca.crt").write_bytes(self.ca)
        return [f"--tls-ca={directory / 'ca.crt'}", f"--tls-server-name={SERVICE_NAME}"]

    def ready(self) -> bool:
        assert self.process.poll() is None, f"the operator exited:\n{self.log.read_text()[-3000:]}"
        return http_status(f"http://127.0.0.1:{self.admin_port}/readyz") == 200


TLS_FLAGS = ("--tls-cert=", "--tls-key=", "--tls-ca=", "--ca-config-map=", "--plaintext")
MOUNTED_TLS = "/etc/llmroute/tls/"


def chart_tls_args(apiserver: ApiServer, namespace: str, release: str, directory: Path) -> list[str]:
    """The control-plane TLS flags the installed chart gives its operator, with the mounted Secret's files
    written to `directory` (ca.crt, tls.crt, tls.key) and the flags pointing there."""
    deployment = apiserver.get("deployment", "-n", namespace, release)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if a.startswith(TLS_FLAGS)]
    if any(MOUNTED_TLS in a for a in args):
        for name, data in apiserver.secret_data(namespace, f"{release}-tls").items():
            (directory / name).write_bytes(data)
    return [a.replace(MOUNTED_TLS, f"{directory}/") for a in args]


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
    tls_args = chart_tls_args(apiserver, OPERATOR_NAMESPACE, RELEASE, directory)
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
    # The operator's own identity, so the chart's RBAC is what it is allowed to do.
    kubeconfig = apiserver.kubeconfig_of(OPERATOR_NAMESPACE, RELEASE, directory / "kubeconfig")
    with running_operator(
        kubeconfig, directory, f"--injection-config={directory / 'injection.json'}",
        f"--webhook-listen={webhook_host}:443",
        f"--webhook-cert={directory / 'tls.crt'}", f"--webhook-key={directory / 'tls.key'}",
        f"--lease-name={RELEASE}", *tls_args,
    ) as running:  # fmt: skip
        yield running


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, directory: Path, *args: str, namespace: str = OPERATOR_NAMESPACE
) -> Iterator[OperatorProcess]:
    """`llmroute operator ARGS` with this kubeconfig, logging to DIRECTORY/operator.log, until the block ends;
    `namespace` is the release's, where its Lease lives (POD_NAMESPACE, as the chart's pod has it)."""
    grpc_port, admin_port = free_port(), free_port()
    log = directory / "operator.log"
    command = [
        sys.executable, "-m", "llmroute", "operator",
        f"--grpc-listen=127.0.0.1:{grpc_port}", f"--admin-listen=127.0.0.1:{admin_port}", *args,
    ]  # fmt: skip
    with log.open("wb") as out:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": namespace}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    ca_file = next((Path(a.partition("=")[2]) for a in args if a.startswith("--tls-ca=")), None)
    running = OperatorProcess(process, log, grpc_port, admin_port, ca_file)
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
