"""End to end on a real cluster: helm install, label a namespace, deploy the sample app, apply a route,
send a request through the injected sidecar.

Needs the image in the cluster: `docker build -t ghcr.io/llmroute/llmroute:0.1.0 . && kind load
docker-image ghcr.io/llmroute/llmroute:0.1.0` (or set LLMROUTE_IMAGE=repo:tag to one it can pull).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmroute.operator.catrust import certificates
from tests.tools import REPO

RELEASE = "llmroute"
OPERATOR_NAMESPACE = "llmroute-system"
APP_NAMESPACE = "shop"


def run(*args: str | Path, timeout: float = 300) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(cluster: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """The chart installed with the CRD, the sample app deployed and its route applied; all removed after."""
    helm_bin: Path = request.getfixturevalue("helm_bin")
    kubectl_bin: Path = request.getfixturevalue("kubectl_bin")
    repository, _, tag = os.environ.get("LLMROUTE_IMAGE", "ghcr.io/llmroute/llmroute:0.1.0").rpartition(":")
    run(kubectl_bin, "apply", "--server-side", "-f", REPO / "charts/llmroute/crds/")
    run(
        helm_bin,
        "upgrade",
        "--install",
        RELEASE,
        REPO / "charts/llmroute",
        "--namespace",
        OPERATOR_NAMESPACE,
        "--create-namespace",
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=IfNotPresent",
        "--wait",
        "--timeout",
        "5m",
    )
    try:
        run(kubectl_bin, "apply", "-f", REPO / "examples/kubernetes/sample-app.yaml")
        run(kubectl_bin, "apply", "-f", REPO / "examples/kubernetes/sample-route.yaml")
        for deployment in ("llm-sim", "storefront"):
            run(kubectl_bin, "-n", APP_NAMESPACE, "rollout", "status", f"deployment/{deployment}", "--timeout=5m")
        yield
    finally:
        subprocess.run([str(kubectl_bin), "delete", "namespace", APP_NAMESPACE, "--wait=false"], check=False)
        subprocess.run([str(helm_bin), "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE], check=False)


def storefront_pod(kubectl: Path) -> dict[str, object]:
    pods = json.loads(run(kubectl, "-n", APP_NAMESPACE, "get", "pods", "-l", "app=storefront", "-o", "json"))
    [pod] = pods["items"]
    return dict(pod)


def test_the_app_pod_got_a_native_sidecar(installed: None, kubectl_bin: Path) -> None:
    spec = storefront_pod(kubectl_bin)["spec"]
    assert isinstance(spec, dict)
    names = [(c["name"], c.get("restartPolicy")) for c in spec.get("initContainers", [])]
    assert ("llmroute-sidecar", "Always") in names


def test_the_simulated_backend_opted_out(installed: None, kubectl_bin: Path) -> None:
    pods = json.loads(run(kubectl_bin, "-n", APP_NAMESPACE, "get", "pods", "-l", "app=llm-sim", "-o", "json"))
    for pod in pods["items"]:
        assert not pod["spec"].get("initContainers")


def test_a_request_through_the_sidecar_reaches_the_backend(installed: None, kubectl_bin: Path) -> None:
    run(kubectl_bin, "-n", APP_NAMESPACE, "wait", "llmroute/sample-chat", "--for=condition=Programmed", "--timeout=2m")
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hello"}]})
    out = run(
        kubectl_bin,
        "-n",
        APP_NAMESPACE,
        "exec",
        "deploy/storefront",
        "-c",
        "app",
        "--",
        "curl",
        "-sS",
        "-D",
        "-",
        "--fail-with-body",
        "-H",
        "content-type: application/json",
        "-d",
        body,
        "http://127.0.0.1:4000/v1/chat/completions",
    )
    headers, _, payload = out.replace("\r\n", "\n").partition("\n\n")
    assert "x-llmroute-backend: sim" in headers.lower()
    assert json.loads(payload)["choices"][0]["message"]["content"]


def test_the_control_plane_is_encrypted_with_nothing_installed_by_hand(installed: None, kubectl_bin: Path) -> None:
    # The operator keeps its CA in the labelled namespace; the injected sidecar trusts it and dials TLS.
    secret = json.loads(run(kubectl_bin, "-n", OPERATOR_NAMESPACE, "get", "secret", f"{RELEASE}-tls", "-o", "json"))
    config_map = json.loads(run(kubectl_bin, "-n", APP_NAMESPACE, "get", "configmap", "llmroute-ca", "-o", "json"))
    ca = base64.b64decode(secret["data"]["ca.crt"]).decode()
    assert certificates(config_map["data"]["ca.crt"])[0] == certificates(ca)[0]
    spec = storefront_pod(kubectl_bin)["spec"]
    assert isinstance(spec, dict)
    [sidecar] = [c for c in spec["initContainers"] if c["name"] == "llmroute-sidecar"]
    assert "--tls-ca=/etc/llmroute/ca/ca.crt" in sidecar["args"] and "--plaintext" not in sidecar["args"]
    logs = run(kubectl_bin, "-n", APP_NAMESPACE, "logs", "deploy/storefront", "-c", "llmroute-sidecar")
    assert "subscribed to control plane" in logs and "PLAINTEXT" not in logs
