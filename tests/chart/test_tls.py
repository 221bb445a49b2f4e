"""Control-plane TLS as the chart renders it: on by default with nothing to create first, the CA
published by the operator to the namespaces sidecars run in, plaintext only when asked for."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from llmroute.operator.injection import InjectionConfig, inject_pod, sidecar_container
from llmroute.operator.main import build_operator_parser, options_from_args
from llmroute.sidecar.main import add_arguments
from tests.chart.conftest import Render
from tests.chart.test_render import VALUE_SETS, by_kind, one


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def injected_sidecar(objects: list[dict[str, Any]], tmp_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sidecar container and the pod volumes the operator's webhook adds, from the rendered injection config."""
    config_map = next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-injection"))
    (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
    config = InjectionConfig.from_file(tmp_path / "config.json")
    pod = {"metadata": {}, "spec": {"containers": [{"name": "app", "image": "app"}]}}
    injected = inject_pod(pod, "shop", config)
    assert injected is not None
    [sidecar] = injected["spec"]["initContainers"]
    assert sidecar == {**sidecar_container(config), "restartPolicy": "Always"}
    return sidecar, injected["spec"]["volumes"]


def sidecar_args(container: dict[str, Any]) -> argparse.Namespace:
    """The injected sidecar's arguments as `llmroute sidecar` reads them."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(container["args"][1:])


def operator_args(container: dict[str, Any]) -> argparse.Namespace:
    """The operator's arguments as `llmroute operator` reads them (less the webhook's, which name mounted files)."""
    webhook = ("--injection-config", "--webhook-")
    return build_operator_parser().parse_args([a for a in container["args"][1:] if not a.startswith(webhook)])


@pytest.mark.parametrize("values", ["defaults", "cert-manager-self-signed"])
def test_default_values_encrypt_the_control_plane_with_nothing_to_create_first(
    render: Render, tmp_path: Path, values: str
) -> None:
    objects = render(VALUE_SETS[values])
    container = operator_container(objects)
    options = options_from_args(operator_args(container))  # the operator accepts its rendered flags
    assert not options.plaintext
    assert (options.tls_cert, options.tls_key, options.ca_file) == (
        Path("/etc/llmroute/tls/tls.crt"), Path("/etc/llmroute/tls/tls.key"), Path("/etc/llmroute/tls/ca.crt")
    )  # fmt: skip
    assert options.ca_config_map == "llmroute-ca"
    # The certificate's Secret is one the chart makes: rendered by Helm, or issued from the rendered Certificate.
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [tls_volume] = [v for v in pod["volumes"] if v["name"] == "tls"]
    made_here = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    made_here |= {c["spec"]["secretName"] for c in by_kind(objects, "Certificate")}
    assert tls_volume["secret"]["secretName"] in made_here
    assert {"name": "tls", "mountPath": "/etc/llmroute/tls", "readOnly": True} in container["volumeMounts"]
    # The injected sidecar dials TLS, trusting the ConfigMap the operator keeps (optional: a pod
    # created before the operator wrote it still starts, and gets the file when it appears).
    sidecar, volumes = injected_sidecar(objects, tmp_path)
    args = sidecar_args(sidecar)
    assert args.tls_ca == Path("/etc/llmroute/ca/ca.crt") and not args.plaintext
    [ca] = [v for v in volumes if v["name"] == "llmroute-ca"]
    assert ca["configMap"] == {"name": options.ca_config_map, "optional": True}
    assert {"name": "llmroute-ca", "mountPath": "/etc/llmroute/ca", "readOnly": True} in sidecar["volumeMounts"]
    # The operator may read and write exactly that ConfigMap (it reads it to leave someone else's alone).
    rules = [r for role in by_kind(objects, "ClusterRole") for r in role["rules"] if r["resources"] == ["configmaps"]]
    assert {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]} in rules
    assert {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["llmroute-ca"],
        "verbs": ["get", "patch"],
    } in rules


def test_plaintext_is_an_explicit_value_that_both_sides_are_told(render: Render, tmp_path: Path) -> None:
    objects = render({"controlPlane.tls.enabled": False})
    options = options_from_args(operator_args(operator_container(objects)))
    assert options.plaintext and options.tls_cert is None and options.ca_config_map is None
    sidecar, volumes = injected_sidecar(objects, tmp_path)
    args = sidecar_args(sidecar)
    assert args.plaintext and args.tls_ca is None
    assert "llmroute-ca" not in {v["name"] for v in volumes}
    rules = [r for role in by_kind(objects, "ClusterRole") for r in role["rules"]]
    assert not [r for r in rules if "configmaps" in r["resources"]]


def test_the_ca_config_map_name_is_one_value(render: Render, tmp_path: Path) -> None:
    objects = render({"controlPlane.tls.caConfigMap": "corp-llmroute-ca"})
    assert options_from_args(operator_args(operator_container(objects))).ca_config_map == "corp-llmroute-ca"
    _, volumes = injected_sidecar(objects, tmp_path)
    assert {"name": "corp-llmroute-ca", "optional": True} in [v.get("configMap") for v in volumes]
    named = [r for role in by_kind(objects, "ClusterRole") for r in role["rules"] if "resourceNames" in r]
    assert {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["corp-llmroute-ca"],
        "verbs": ["get", "patch"],
    } in named
    config = json.loads(
        next(o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-injection"))["data"][
            "config.json"
        ]
    )
    assert config["caConfigMap"] == "corp-llmroute-ca"


@pytest.mark.parametrize("values", ["defaults", "cert-manager-self-signed", "cert-manager-cluster-issuer"])
def test_replicas_authenticate_each_other_with_the_certificate_that_names_their_service(
    render: Render, values: str
) -> None:
    objects = render(VALUE_SETS[values])
    options = options_from_args(operator_args(operator_container(objects)))  # accepted: --tls-ca comes with it
    [(host, port)] = options.peers
    assert not options.plaintext and options.ca_file is not None
    assert options.peer_listen == f"0.0.0.0:{port}"
    [headless] = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert host == f"{headless['metadata']['name']}.llmroute-system.svc"
    assert port in [p["port"] for p in headless["spec"]["ports"]]
    # The certificate each replica presents names that host, and may be used by a client (cert-manager's usages;
    # the Helm-generated one is tested as both ends of a real handshake in tests/operator/test_peer_auth.py).
    for certificate in by_kind(objects, "Certificate"):
        if not certificate["spec"].get("isCA"):
            assert host in certificate["spec"]["dnsNames"]
            assert {"server auth", "client auth"} <= set(certificate["spec"]["usages"])


def test_a_plaintext_control_plane_leaves_the_peer_port_plaintext_too(render: Render) -> None:
    objects = render({"controlPlane.tls.enabled": False})
    options = options_from_args(operator_args(operator_container(objects)))
    assert options.plaintext and options.peers
    [headless] = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert {p["name"]: p.get("appProtocol") for p in headless["spec"]["ports"]}["peers"] == "http"
