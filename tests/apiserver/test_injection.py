"""The chart's MutatingWebhookConfiguration, with the caBundle helm generated, makes the API server call
the operator's webhook on Pod creation in a labelled namespace. Without nodes the pods stay Pending:
the Pod the API server stored is what the tests look at."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.apiserver.conftest import OperatorProcess
from tests.apiserver.harness import ApiServer, unique

pytestmark = pytest.mark.usefixtures("operator")

SIDECAR = "llmroute-sidecar"


def pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """An app pod as a Deployment would create it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "storefront", **(labels or {})}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/storefront:1"}]},
    }


def create(apiserver: ApiServer, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """Create the pod and return it as stored (after every admission plugin and webhook)."""
    done = apiserver.kubectl("create", "-n", namespace, "-f", "-", "-o", "json", stdin=json.dumps(manifest))
    stored: dict[str, Any] = json.loads(done.stdout)
    return stored


def sidecars(stored: dict[str, Any]) -> list[dict[str, Any]]:
    containers = [*stored["spec"].get("initContainers", []), *stored["spec"]["containers"]]
    return [c for c in containers if c["name"] == SIDECAR]


@pytest.fixture(scope="module")
def labelled(apiserver: ApiServer) -> str:
    """A namespace labelled for injection."""
    return apiserver.create_namespace(unique("inject"), {"llmroute.io/injection": "enabled"})


def test_the_api_server_calls_the_webhook_in_a_labelled_namespace(
    apiserver: ApiServer, operator: OperatorProcess, labelled: str
) -> None:
    stored = create(apiserver, labelled, pod("storefront-0"))
    [sidecar] = sidecars(stored)
    assert sidecar in stored["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    # Every operator replica, through the chart's headless Service.
    assert "--control-plane=llmroute-replicas.llmroute-system.svc:15010" in sidecar["args"]
    assert stored["metadata"]["labels"]["llmroute.io/sidecar"] == "injected"
    [app] = stored["spec"]["containers"]
    assert {"name": "OPENAI_BASE_URL", "value": "http://127.0.0.1:4000/v1"} in app["env"]
    assert {"name": "ANTHROPIC_BASE_URL", "value": "http://127.0.0.1:4000"} in app["env"]
    volumes = {v["name"]: v for v in stored["spec"]["volumes"]}
    # TLS by default: the sidecar trusts the CA the operator keeps in the namespace (ConfigMap llmroute-ca).
    assert "--tls-ca=/etc/llmroute/ca/ca.crt" in sidecar["args"] and "--plaintext" not in sidecar["args"]
    assert volumes["llmroute-ca"]["configMap"] == {"name": "llmroute-ca", "optional": True, "defaultMode": 420}
    [source] = volumes["llmroute-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "llmroute"
    # The API server's own ServiceAccount admission still ran: the app keeps its API access volume.
    assert any(name.startswith("kube-api-access-") for name in volumes)
    assert stored["status"]["phase"] == "Pending"


def test_an_opted_out_pod_is_left_alone(apiserver: ApiServer, labelled: str) -> None:
    stored = create(apiserver, labelled, pod("llm-sim-0", {"llmroute.io/inject": "false"}))
    assert sidecars(stored) == []
    assert "initContainers" not in stored["spec"]


def test_a_pod_in_an_unlabelled_namespace_is_left_alone(apiserver: ApiServer) -> None:
    namespace = apiserver.create_namespace(unique("plain"))
    stored = create(apiserver, namespace, pod("storefront-0"))
    assert sidecars(stored) == []
    assert "env" not in stored["spec"]["containers"][0]


def test_a_pod_that_already_has_the_sidecar_is_not_injected_twice(apiserver: ApiServer, labelled: str) -> None:
    first = create(apiserver, labelled, pod("storefront-1"))
    again = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "storefront-2", "labels": first["metadata"]["labels"]},
        "spec": {k: v for k, v in first["spec"].items() if k not in ("nodeName",)},
    }
    stored = create(apiserver, labelled, again)
    assert len(sidecars(stored)) == 1
    assert stored["spec"]["initContainers"] == first["spec"]["initContainers"]
    [app] = stored["spec"]["containers"]
    assert [e["name"] for e in app["env"]].count("OPENAI_BASE_URL") == 1
