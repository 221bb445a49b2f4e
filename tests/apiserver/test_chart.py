"""`helm install` of the chart on a real API server: the CRD is accepted (every CEL rule compiles within
its cost budget), `kubectl explain` and the printer columns work, and the server itself refuses
invalid routes with the CEL rules' messages."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from tests.apiserver.conftest import Release
from tests.apiserver.harness import OPERATOR_NAMESPACE, RELEASE, ApiServer, eventually, unique
from tests.chart.test_crd import CEL_CASES, POLICY_CEL_CASES, broken, broken_policy, examples_of, full_route, routes

pytestmark = pytest.mark.usefixtures("release")


@pytest.fixture(scope="module")
def namespace(apiserver: ApiServer) -> str:
    """A namespace of this module's own."""
    return apiserver.create_namespace(unique("chart"))


def in_namespace(route: dict[str, Any], namespace: str, name: str | None = None) -> dict[str, Any]:
    """A copy of `route` placed in `namespace` (renamed when `name` is given)."""
    route = copy.deepcopy(route)
    route["metadata"] = {"name": name or route["metadata"]["name"], "namespace": namespace}
    return route


def test_an_upgrade_keeps_the_webhook_certificate_the_api_server_trusts(apiserver: ApiServer, release: Release) -> None:
    assert "STATUS: deployed" in release.installed.stdout and "REVISION: 2" in release.upgraded.stdout
    # The server warns about unknown or duplicate fields and deprecated APIs; helm prints its warnings.
    assert "warning" not in (release.installed.stderr + release.upgraded.stderr).lower()
    tls = apiserver.secret_data(OPERATOR_NAMESPACE, f"{RELEASE}-tls")
    assert tls == release.tls_after_install  # helm's `lookup` found the Secret; nothing was regenerated
    webhook = apiserver.get("mutatingwebhookconfiguration", f"{RELEASE}-injection")
    [entry] = webhook["webhooks"]
    assert base64.b64decode(entry["clientConfig"]["caBundle"]) == tls["ca.crt"]


def test_the_crd_is_established(apiserver: ApiServer) -> None:
    crd = apiserver.get("crd", "llmroutes.llmroute.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert conditions.get("NonStructuralSchema", "False") == "False"


def test_kubectl_explain_describes_the_backends(apiserver: ApiServer) -> None:
    # The server publishes a new CRD's OpenAPI document a moment after the CRD is established.
    explained = eventually(
        lambda: apiserver.kubectl("explain", "llmroute.spec.backends", check=False).returncode == 0,
        what="the CRD's OpenAPI document",
    )
    assert explained
    out = apiserver.kubectl("explain", "llmroute.spec.backends").stdout
    assert "The LLM APIs this route may use." in out
    for field in ("apiKeySecretRef", "provider", "url", "model", "price", "capabilities"):
        assert f"  {field}\t" in out, f"{field} missing from:\n{out}"


def test_every_example_route_is_accepted(apiserver: ApiServer, namespace: str) -> None:
    examples = [in_namespace(route, namespace) for route in routes()]
    out = apiserver.apply(*examples, server_side=True).stdout
    for route in examples:
        assert f"llmroute.llmroute.io/{route['metadata']['name']} serverside-applied" in out


@pytest.mark.usefixtures("operator")  # it writes status.backendNames, the wide Backends column
def test_get_shows_the_printer_columns(apiserver: ApiServer, namespace: str) -> None:
    route = in_namespace(full_route(), namespace, "columns")
    apiserver.apply(route)
    status = eventually(lambda: apiserver.get("llmroute", "-n", namespace, "columns").get("status"), what="status")
    [programmed] = [c["status"] for c in status["conditions"] if c["type"] == "Programmed"]
    header, row = apiserver.kubectl("get", "llmroutes", "-n", namespace, "columns").stdout.splitlines()
    assert header.split() == ["NAME", "PROGRAMMED", "MODELS", "SIDECARS", "P95", "AGE"]
    assert row.split()[:4] == ["columns", programmed, '["chat"]', "0"]
    wide_header, wide_row = apiserver.kubectl(
        "get", "llmr", "-n", namespace, "columns", "-o", "wide"
    ).stdout.splitlines()
    assert "BACKENDS" in wide_header.split()
    backends = ",".join(b["name"] for b in route["spec"]["backends"])
    assert backends in wide_row.split()


@pytest.mark.parametrize(("change", "message"), CEL_CASES)
def test_the_server_refuses_a_route_breaking_a_cel_rule(
    apiserver: ApiServer, namespace: str, change: str, message: str
) -> None:
    route = in_namespace(broken(change), namespace, unique("broken"))
    done = apiserver.kubectl("create", "-f", "-", stdin=json.dumps(route), check=False)
    assert done.returncode != 0
    assert "is invalid" in done.stderr
    assert message in done.stderr
    assert apiserver.get("llmroute", "-n", namespace, route["metadata"]["name"]) is None


def test_the_server_refuses_a_route_breaking_the_schema(apiserver: ApiServer, namespace: str) -> None:
    route = in_namespace(full_route(), namespace, unique("schema"))
    route["spec"]["strategy"] = "fastest"
    route["spec"]["backends"][0]["name"] = "Not_A_DNS_Label"
    done = apiserver.kubectl("create", "-f", "-", stdin=json.dumps(route), check=False)
    assert done.returncode != 0
    assert 'spec.strategy: Unsupported value: "fastest"' in done.stderr
    assert "spec.backends[0].name: Invalid value" in done.stderr


def test_the_policy_crd_is_established_and_explained(apiserver: ApiServer) -> None:
    crd = apiserver.get("crd", "llmpolicies.llmroute.io")
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert (conditions["Established"], conditions["NamesAccepted"]) == ("True", "True")
    explained = eventually(
        lambda: apiserver.kubectl("explain", "llmpolicy.spec.budgets", check=False).returncode == 0,
        what="the policy CRD's OpenAPI document",
    )
    assert explained
    out = apiserver.kubectl("explain", "llmpolicy.spec.budgets").stdout
    for field in ("window", "limitUSD", "action", "downgrade", "workloadSelector", "routes"):
        assert f"  {field}\t" in out, f"{field} missing from:\n{out}"


@pytest.mark.usefixtures("operator")  # it writes the status the columns show
def test_every_example_policy_is_accepted_and_shows_its_columns(apiserver: ApiServer, namespace: str) -> None:
    policies = [in_namespace(p, namespace) for p in examples_of("LLMPolicy")]
    out = apiserver.apply(*policies, server_side=True).stdout
    for policy in policies:
        assert f"llmpolicy.llmroute.io/{policy['metadata']['name']} serverside-applied" in out
    name = policies[0]["metadata"]["name"]
    status = eventually(
        lambda: (apiserver.get("llmpolicy", "-n", namespace, name) or {}).get("status", {}).get("budgetState"),
        what="the policy's status",
    )
    assert status == "Ok"
    header, row = apiserver.kubectl("get", "llmp", "-n", namespace, name).stdout.splitlines()
    assert header.split() == ["NAME", "TIER", "BUDGET", "STATE", "SPENT", "LIMIT", "AGE"]
    assert row.split()[:5] == [name, policies[0]["spec"]["tier"], "Ok", "0", "2000"]


@pytest.mark.parametrize(("change", "message"), POLICY_CEL_CASES)
def test_the_server_refuses_a_policy_breaking_a_cel_rule(
    apiserver: ApiServer, namespace: str, change: str, message: str
) -> None:
    policy = in_namespace(broken_policy(change), namespace, unique("broken"))
    done = apiserver.kubectl("create", "-f", "-", stdin=json.dumps(policy), check=False)
    assert done.returncode != 0
    assert "is invalid" in done.stderr
    assert message in done.stderr
    assert apiserver.get("llmpolicy", "-n", namespace, policy["metadata"]["name"]) is None
