"""The operator, as a local process, against a real API server: it reconciles, writes status only through
the status subresource with the generation the server gave, and never undoes a user's spec change."""

from __future__ import annotations

import asyncio
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from llmroute.operator.catrust import certificates
from llmroute.v1 import routes_pb2
from tests.apiserver.conftest import OperatorProcess, chart_tls_args, running_operator
from tests.apiserver.harness import ApiServer, eventually, subscribe, unique
from tests.tools import REPO

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def namespace(apiserver: ApiServer) -> str:
    """A namespace of this test's own."""
    return apiserver.create_namespace(unique("op"))


def route(namespace: str, name: str, models: list[str]) -> dict[str, Any]:
    """A minimal valid LLMRoute."""
    backend = {"name": "primary", "provider": "openai", "url": "http://127.0.0.1:9/v1", "model": "m"}
    return {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"models": models, "backends": [backend]},
    }


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return {}


def accepted_at_generation(apiserver: ApiServer, namespace: str, name: str) -> dict[str, Any] | None:
    """The route once its status describes its current generation with Accepted set, else None."""
    obj = apiserver.get("llmroute", "-n", namespace, name)
    status = (obj or {}).get("status") or {}
    if status.get("observedGeneration") == obj["metadata"]["generation"] and condition(obj, "Accepted"):
        return dict(obj)
    return None


def test_status_follows_the_generation_the_server_assigns(apiserver: ApiServer, namespace: str) -> None:
    apiserver.apply(route(namespace, "support", ["chat"]))
    first = eventually(lambda: accepted_at_generation(apiserver, namespace, "support"), what="status of generation 1")
    assert first["metadata"]["generation"] == 1
    assert condition(first, "Accepted")["status"] == "True"
    apiserver.apply(route(namespace, "support", ["chat", "chat-mini"]))
    second = eventually(lambda: accepted_at_generation(apiserver, namespace, "support"), what="status of generation 2")
    assert second["metadata"]["generation"] == 2
    assert condition(second, "Accepted")["observedGeneration"] == 2


def test_the_operator_writes_only_status_and_only_through_the_subresource(apiserver: ApiServer, namespace: str) -> None:
    apiserver.apply(route(namespace, "support", ["chat"]), server_side=True)
    eventually(lambda: accepted_at_generation(apiserver, namespace, "support"), what="a written status")
    entries = apiserver.get("llmroute", "-n", namespace, "support", "--show-managed-fields")["metadata"][
        "managedFields"
    ]
    others = [e for e in entries if e["manager"] != "test"]
    assert others, f"no field manager besides the test's own: {entries}"
    for entry in others:
        assert entry.get("subresource") == "status", f"the operator wrote outside status: {entry}"
        assert set(entry["fieldsV1"]) == {"f:status"}, entry


def test_a_burst_of_spec_updates_is_never_undone(apiserver: ApiServer, namespace: str) -> None:
    apiserver.apply(route(namespace, "support", ["chat"]))
    eventually(lambda: accepted_at_generation(apiserver, namespace, "support"), what="the first status")
    for i in range(10):  # each a separate write while the operator reconciles and writes status
        patch = {"spec": {"models": [f"chat-{i}"]}}
        apiserver.kubectl("patch", "llmroute", "-n", namespace, "support", "--type=merge", "-p", json.dumps(patch))
    final = eventually(lambda: accepted_at_generation(apiserver, namespace, "support"), what="the final status")
    assert final["spec"]["models"] == ["chat-9"]
    assert final["metadata"]["generation"] == 11
    assert condition(final, "Accepted")["status"] == "True"


def test_the_older_route_keeps_a_contested_model(apiserver: ApiServer, namespace: str) -> None:
    apiserver.apply(route(namespace, "z-first", ["chat"]))
    first = eventually(lambda: accepted_at_generation(apiserver, namespace, "z-first"), what="the first route")
    # creationTimestamp has a resolution of one second: wait for the next one so "older" is well defined.
    created = datetime.datetime.fromisoformat(first["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    eventually(lambda: datetime.datetime.now(datetime.UTC) > created + datetime.timedelta(seconds=1.5), what="1 s")
    apiserver.apply(route(namespace, "a-second", ["chat"]))
    second = eventually(lambda: accepted_at_generation(apiserver, namespace, "a-second"), what="the second route")
    assert condition(second, "Accepted")["status"] == "False"
    assert condition(second, "Accepted")["reason"] == "ModelConflict"
    assert "z-first" in condition(second, "Accepted")["message"]
    assert condition(apiserver.get("llmroute", "-n", namespace, "z-first"), "Accepted")["status"] == "True"

    def warnings() -> list[tuple[str, str, str]]:
        events = apiserver.get("events", "-n", namespace)["items"]
        return [(e["type"], e["reason"], e["involvedObject"]["uid"]) for e in events]

    # The API server validates Events too: the operator's Warning must be accepted and point at the route.
    eventually(warnings, what="a Warning Event")
    assert warnings() == [("Warning", "ModelConflict", second["metadata"]["uid"])]


def test_a_sidecar_in_a_namespace_without_routes_gets_an_empty_table(
    apiserver: ApiServer, operator: OperatorProcess, namespace: str
) -> None:
    token = apiserver.token(namespace, "default", "llmroute")
    table = asyncio.run(subscribe(operator.grpc_port, token, namespace, operator.ca))
    assert isinstance(table, routes_pb2.RouteResponse), f"refused: {table}"
    assert list(table.table.routes) == []


def test_a_referenced_secret_is_found_once_it_is_created(apiserver: ApiServer, namespace: str) -> None:
    keyed = route(namespace, "keyed", ["chat"])
    keyed["spec"]["backends"][0]["apiKeySecretRef"] = {"name": "llm-keys", "key": "openai"}
    apiserver.apply(keyed)

    def resolved_refs() -> dict[str, Any]:
        return condition(accepted_at_generation(apiserver, namespace, "keyed"), "ResolvedRefs")

    missing = eventually(resolved_refs, what="ResolvedRefs")
    assert (missing["status"], missing["reason"]) == ("False", "SecretNotFound")
    apiserver.kubectl("create", "secret", "generic", "llm-keys", "-n", namespace, "--from-literal=openai=sk-test")
    found = eventually(lambda: resolved_refs().get("status") == "True" and resolved_refs(), what="the Secret found")
    assert found["reason"] == "SecretsFound"
    assert "sk-test" not in json.dumps(apiserver.get("llmroute", "-n", namespace, "keyed"))


def test_a_release_for_one_namespace_serves_it_with_a_role_binding(apiserver: ApiServer, tmp_path: Path) -> None:
    watched = apiserver.create_namespace(unique("watched"))
    system, release = unique("llmroute-scoped"), "llmroute-scoped"  # its full name is the release name
    apiserver.helm(
        "install", release, str(REPO / "charts" / "llmroute"), "--namespace", system, "--create-namespace",
        "--skip-crds", "--set", f"operator.watchNamespace={watched}", "--set", "injection.enabled=false",
    )  # fmt: skip
    kubeconfig = apiserver.kubeconfig_of(system, release, tmp_path / "kubeconfig")
    args = (f"--namespace={watched}", f"--lease-name={release}", *chart_tls_args(apiserver, system, release, tmp_path))
    with running_operator(kubeconfig, tmp_path, *args, namespace=system) as scoped:
        apiserver.apply(route(watched, "support", ["chat"]))
        obj = eventually(lambda: accepted_at_generation(apiserver, watched, "support"), what="the route's status")
        assert condition(obj, "Accepted")["status"] == "True"
        # The watched namespace gets the control plane's CA (labelled for injection or not): the Role allows it.
        ca = eventually(lambda: apiserver.get("configmap", "-n", watched, "llmroute-ca"), what="the CA ConfigMap")
        secret = apiserver.secret_data(system, f"{release}-tls")
        assert certificates(ca["data"]["ca.crt"]) == certificates(secret["ca.crt"].decode())
        assert "Forbidden" not in scoped.log.read_text()
