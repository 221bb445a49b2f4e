"""The control plane's CA reaches the namespaces sidecars run in: the operator (with the chart's flags and
RBAC) keeps ConfigMap llmroute-ca in every namespace labelled for injection, and a new CA replaces it
there with the old one kept beside it, which is what a renewed certificate needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmroute.operator.catrust import certificates
from tests.apiserver.conftest import OperatorProcess
from tests.apiserver.harness import OPERATOR_NAMESPACE, RELEASE, ApiServer, eventually, unique
from tests.controlplane.test_tls import chart_certificate

pytestmark = pytest.mark.usefixtures("operator")

CONFIG_MAP = "llmroute-ca"
LABEL = {"llmroute.io/injection": "enabled"}


def published(apiserver: ApiServer, namespace: str) -> list[str] | None:
    """The certificates in the namespace's CA ConfigMap (None while there is none)."""
    found: dict[str, Any] | None = apiserver.get("configmap", "-n", namespace, CONFIG_MAP)
    return certificates(found["data"]["ca.crt"]) if found else None


def chart_ca(apiserver: ApiServer) -> list[str]:
    return certificates(apiserver.secret_data(OPERATOR_NAMESPACE, f"{RELEASE}-tls")["ca.crt"].decode())


def test_a_namespace_labelled_for_injection_gets_the_ca_and_others_do_not(apiserver: ApiServer) -> None:
    plain = apiserver.create_namespace(unique("no-ca"))
    labelled = apiserver.create_namespace(unique("ca"), LABEL)
    assert eventually(lambda: published(apiserver, labelled), what="the CA ConfigMap") == chart_ca(apiserver)
    stored = apiserver.get("configmap", "-n", labelled, CONFIG_MAP)
    assert stored["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "llmroute"}
    assert published(apiserver, plain) is None
    # Labelled later (the way users turn injection on): the CA follows.
    apiserver.kubectl("label", "namespace", plain, "llmroute.io/injection=enabled")
    assert eventually(lambda: published(apiserver, plain), what="the CA after labelling") == chart_ca(apiserver)


def test_a_config_map_of_that_name_the_operator_did_not_create_is_left_alone_and_reported(
    apiserver: ApiServer,
) -> None:
    namespace = apiserver.create_namespace(unique("taken"))
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, "namespace": namespace}}
    apiserver.apply({**theirs, "data": {"ca.crt": "their own bundle"}})
    apiserver.kubectl("label", "namespace", namespace, "llmroute.io/injection=enabled")

    def conflict() -> list[str]:
        events = apiserver.get("events", "-n", namespace)["items"]
        return [
            e["message"]
            for e in events
            if e["reason"] == "CAConfigMapConflict" and e["type"] == "Warning"
            and e["involvedObject"]["kind"] == "ConfigMap" and e["involvedObject"]["name"] == CONFIG_MAP
        ]  # fmt: skip

    assert "not created by llmroute" in eventually(conflict, what="a CAConfigMapConflict Event")[0]
    assert apiserver.get("configmap", "-n", namespace, CONFIG_MAP)["data"] == {"ca.crt": "their own bundle"}
    # Once theirs is gone, the CA arrives (a conflict is looked at again every 15 s).
    apiserver.kubectl("delete", "configmap", "-n", namespace, CONFIG_MAP)
    assert eventually(lambda: published(apiserver, namespace), within=60, what="the CA") == chart_ca(apiserver)


def test_a_new_ca_replaces_the_published_one_and_keeps_the_old_beside_it(
    apiserver: ApiServer, operator: OperatorProcess, helm_bin: Path
) -> None:
    namespace = apiserver.create_namespace(unique("rotate"), LABEL)
    old = chart_ca(apiserver)
    assert eventually(lambda: published(apiserver, namespace), what="the CA ConfigMap") == old
    ca_file = operator.ca_file
    assert ca_file is not None
    new = chart_certificate(helm_bin)["ca.crt"]
    ca_file.write_bytes(new)  # what the kubelet does to the operator's mount when the Secret is renewed
    try:
        rotated = eventually(lambda: published(apiserver, namespace) != old and published(apiserver, namespace))
        assert rotated == [*certificates(new.decode()), *old]
    finally:
        ca_file.write_bytes("\n".join(old).encode() + b"\n")
