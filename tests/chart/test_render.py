"""The Helm chart: lint, render with default and non-default values, validate against Kubernetes 1.30."""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from llmroute.operator.injection import InjectionConfig, inject_pod, sidecar_container
from llmroute.sidecar.main import add_arguments
from llmroute.sidecar.upstream.egress import Egress
from tests.chart.conftest import CHART, Render

K8S_VERSION = "1.30.0"
# Kinds from CRDs that kubernetes-validate has no schema for; rendered only when asked for.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "regular-container-sidecar": {"injection.mode": "container"},
    "cert-manager-self-signed": {"injection.tls.source": "cert-manager"},
    "cert-manager-cluster-issuer": {
        "injection.tls.source": "cert-manager",
        "injection.tls.certManager.issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"},
    },
    "monitoring": {"serviceMonitor.enabled": True, "dashboard.enabled": True},
    "egress-proxy-and-ca": {
        "injection.sidecar.egress": {
            "httpsProxy": "http://proxy.corp:3128",
            "noProxy": ".corp,10.0.0.0/8",
            "caConfigMap": "corp-ca",
        }
    },
    "one-namespace-no-injection": {"operator.watchNamespace": "shop", "injection.enabled": False},
    "plaintext-control-plane": {"controlPlane.tls.enabled": False},
}


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = by_kind(objects, kind)
    return found


def test_lint_strict(helm_bin: Path) -> None:
    result = subprocess.run([str(helm_bin), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_rendered_object_is_valid_kubernetes_1_30(render: Render, values: dict[str, Any]) -> None:
    for obj in render(values):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            assert obj["metadata"]["name"].startswith("llmroute")
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_optional_objects_follow_their_values(render: Render) -> None:
    default_kinds = {o["kind"] for o in render()}
    assert {"ServiceMonitor", "PodMonitor", "Certificate", "Issuer"}.isdisjoint(default_kinds)
    assert not [o for o in render() if o["metadata"]["name"].endswith("-dashboard")]
    monitoring = render(VALUE_SETS["monitoring"])
    assert one(monitoring, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "http-metrics"
    assert one(monitoring, "PodMonitor")["spec"]["selector"]["matchLabels"] == {"llmroute.io/sidecar": "injected"}
    dashboard = next(o for o in monitoring if o["metadata"]["name"].endswith("-dashboard"))
    assert json.loads(dashboard["data"]["llmroute.json"])["uid"] == "llmroute"
    assert "MutatingWebhookConfiguration" not in {o["kind"] for o in render({"injection.enabled": False})}


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("injection.mod", "container", "additional properties 'mod' not allowed"),
        ("operater.auth", False, "additional properties 'operater' not allowed"),
        ("injection.mode", "sidecar", "value must be one of 'native', 'container'"),
        (
            "injection.sidecar.passthrough",
            "openai:https://api.openai.com/v1",
            "'/injection/sidecar/passthrough': 'openai:https://api.openai.com/v1' does not match pattern",
        ),
        ("injection.sidecar.otel", {"OTEL_EXPORTER_OTLP_ENDPOINT": 4318}, "got number, want string"),
        (
            "injection.sidecar.egress",
            {"httpsProxy": "http://proxy:3128", "httpsProxySecretRef": {"name": "corp-proxy"}},
            "set httpsProxy or httpsProxySecretRef, not both",
        ),
        ("injection.sidecar.egress.httpsProxy", "socks4://proxy:1080", "does not match pattern"),
    ],
)
def test_a_typo_in_values_fails_naming_the_key(helm_bin: Path, key: str, value: Any, message: str) -> None:
    result = subprocess.run(
        [str(helm_bin), "template", "llmroute", str(CHART), "--set-json", f"{key}={json.dumps(value)}"],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_rbac_is_least_privilege_without_wildcards(render: Render) -> None:
    objects = render()
    rules: dict[tuple[str, str], list[str]] = {}
    named: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for role in by_kind(objects, "ClusterRole"):
        if role["metadata"]["name"] in USER_ROLES:
            continue  # for people, not the operator (test_user_roles_split_routes_from_policies)
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    if "resourceNames" in rule:
                        named[(group, resource)] = (rule["resourceNames"], rule["verbs"])
                    else:
                        rules[(group, resource)] = sorted(rules.get((group, resource), []) + rule["verbs"])
    # Secrets: read the referenced ones; create and patch only the bootstrap table. ConfigMaps: only the CA.
    assert named == {
        ("", "secrets"): (["llmroute-bootstrap"], ["patch"]),
        ("", "configmaps"): (["llmroute-ca"], ["get", "patch"]),
    }
    assert rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): ["list", "watch"],
        ("authentication.k8s.io", "tokenreviews"): ["create"],
        ("", "namespaces"): ["list", "watch"],
        ("llmroute.io", "llmroutes"): ["get", "list", "patch", "watch"],
        ("llmroute.io", "llmroutes/status"): ["patch"],
        ("llmroute.io", "llmpolicies"): ["get", "list", "watch"],
        ("llmroute.io", "llmpolicies/status"): ["patch"],
        ("", "secrets"): ["create", "get", "list", "watch"],
        ("", "events"): ["create"],
        ("", "configmaps"): ["create"],
    }
    # The one namespaced grant: the leader-election Lease, in the release's namespace, by name.
    [role] = by_kind(objects, "Role")
    assert role["metadata"]["namespace"] == "llmroute-system"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["llmroute"],
         "verbs": ["get", "patch"]},
    ]  # fmt: skip
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--lease-name=llmroute" in args


USER_ROLES = ("llmroute-route-editor", "llmroute-policy-admin", "llmroute-viewer")
WRITE = {"create", "update", "patch", "delete", "deletecollection"}


def test_user_roles_split_routes_from_policies(render: Render) -> None:
    roles = {r["metadata"]["name"]: r for r in by_kind(render(), "ClusterRole") if r["metadata"]["name"] in USER_ROLES}

    def writes(name: str) -> set[str]:
        return {res for rule in roles[name]["rules"] if set(rule["verbs"]) >= WRITE for res in rule["resources"]}

    def aggregated_to(name: str) -> set[str]:
        prefix = "rbac.authorization.k8s.io/aggregate-to-"
        return {k.removeprefix(prefix) for k, v in roles[name]["metadata"]["labels"].items() if k.startswith(prefix)}

    # App teams (the built-in "edit" role) change routes and only read the policies that bound them.
    assert writes("llmroute-route-editor") == {"llmroutes"}
    assert aggregated_to("llmroute-route-editor") == {"edit", "admin"}
    # Platform teams ("admin", or a binding to llmroute-policy-admin) own the policies.
    assert writes("llmroute-policy-admin") == {"llmpolicies"}
    assert aggregated_to("llmroute-policy-admin") == {"admin"}
    assert writes("llmroute-viewer") == set() and aggregated_to("llmroute-viewer") == {"view"}


def test_the_control_plane_is_highly_available_by_default(render: Render) -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in pod["topologySpreadConstraints"])
    # Sidecars and the leader reach every replica through the headless Service.
    [headless] = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert headless["metadata"]["name"] == "llmroute-replicas"
    assert "--peers=llmroute-replicas.llmroute-system.svc:15021" in pod["containers"][0]["args"]
    assert {"name": "peers", "port": 15021, "targetPort": "peers", "protocol": "TCP", "appProtocol": "https"} in (
        headless["spec"]["ports"]
    )
    assert {"name": "peers", "containerPort": 15021, "protocol": "TCP"} in pod["containers"][0]["ports"]
    # A replica of the previous release (rolling update) grants 1/replicas of every limit: the leader leaves it that.
    assert "--previous-quota-replicas=2" in pod["containers"][0]["args"]
    args = one(render({"operator.replicas": 3}), "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--previous-quota-replicas=3" in args


def test_one_watched_namespace_binds_route_access_in_that_namespace_only(render: Render) -> None:
    objects = render({"operator.watchNamespace": "shop"})
    [binding] = [b for b in by_kind(objects, "RoleBinding") if b["metadata"]["namespace"] == "shop"]
    assert binding["roleRef"]["name"].endswith("-routes")
    assert [b["roleRef"]["name"] for b in by_kind(objects, "ClusterRoleBinding")] == ["llmroute-cluster"]
    args = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=shop" in args and "--all-namespaces" not in args


def test_operator_pod_is_hardened_and_probed_on_the_admin_port(render: Render) -> None:
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    admin = next(p for p in container["ports"] if p["containerPort"] == 15020)["name"]
    assert {container[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {admin}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["args"][:4] == [
        "operator",
        "--grpc-listen=0.0.0.0:15010",
        "--admin-listen=0.0.0.0:15020",
        "--all-namespaces",
    ]


@pytest.mark.parametrize(("mode", "native"), [("native", True), ("container", False)])
def test_injection_config_carries_the_sidecar_mode(render: Render, mode: str, native: bool) -> None:
    config_map = next(
        o
        for o in render({"injection.mode": mode})
        if o["metadata"]["name"].endswith("-injection") and o["kind"] == "ConfigMap"
    )
    config = json.loads(config_map["data"]["config.json"])
    assert config["mode"] == mode
    assert config["controlPlane"] == "llmroute-replicas.llmroute-system.svc:15010"
    assert config["operatorNamespace"] == "llmroute-system"


PUBLIC = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}


@pytest.mark.parametrize(
    ("value", "arg", "upstreams"),
    [
        (None, "openai=https://api.openai.com/v1,anthropic=https://api.anthropic.com", PUBLIC),
        ("off", "off", {}),
        ("openai=https://gateway.corp/v1", "openai=https://gateway.corp/v1", {"openai": "https://gateway.corp/v1"}),
    ],
)
def test_injected_sidecar_passes_through_to_the_public_apis_by_default(
    render: Render, tmp_path: Path, value: str | None, arg: str, upstreams: dict[str, str]
) -> None:
    config_map = next(
        o
        for o in render({} if value is None else {"injection.sidecar.passthrough": value})
        if o["metadata"]["name"].endswith("-injection") and o["kind"] == "ConfigMap"
    )
    (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
    container = sidecar_container(InjectionConfig.from_file(tmp_path / "config.json"))
    [rendered] = [a for a in container["args"] if a.startswith("--passthrough")]
    assert rendered == f"--passthrough={arg}"
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # and the sidecar reads it as meant
    assert parser.parse_args([rendered]).passthrough == upstreams


def test_injected_sidecar_gets_the_egress_proxy_and_ca(render: Render, tmp_path: Path) -> None:
    egress = {
        "httpsProxy": "http://proxy.corp:3128",
        "noProxy": ".corp",
        "caConfigMap": "corp-ca",
        "caKey": "bundle.pem",
    }
    config = InjectionConfig.from_file(_injection_config(render({"injection.sidecar.egress": egress}), tmp_path))
    pod = inject_pod({"metadata": {"name": "app"}, "spec": {"containers": [{"name": "app"}]}}, "shop", config)
    assert pod is not None
    [sidecar] = pod["spec"]["initContainers"]
    env = {e["name"]: e.get("value") for e in sidecar["env"]}
    control_host = config.control_plane.rpartition(":")[0]
    assert env["HTTPS_PROXY"] == "http://proxy.corp:3128" and "HTTP_PROXY" not in env
    assert env["NO_PROXY"] == f".corp,{control_host}"  # gRPC honours the proxy too: the operator stays direct
    assert "--ca-bundle=/etc/llmroute/egress-ca/bundle.pem" in sidecar["args"]
    assert {"name": "llmroute-egress-ca", "configMap": {"name": "corp-ca"}} in pod["spec"]["volumes"]
    mounted = {m["name"]: m["mountPath"] for m in sidecar["volumeMounts"]}
    assert mounted["llmroute-egress-ca"] == "/etc/llmroute/egress-ca"
    settings = Egress.from_environment(env)  # and the sidecar reads them as meant
    assert str(settings.https_proxy) == "proxy.corp:3128"
    assert settings.proxy_for("https", "api.openai.com", 443) is not None
    assert settings.proxy_for("https", "llm.corp", 443) is None
    assert settings.proxy_for("http", control_host, 9000) is None

    # Credentials in a Secret of the app's namespace stay out of the pod spec.
    secret = {"httpsProxySecretRef": {"name": "corp-proxy", "key": "https"}, "noProxy": ".corp"}
    hidden = InjectionConfig.from_file(_injection_config(render({"injection.sidecar.egress": secret}), tmp_path))
    env = sidecar_container(hidden)["env"]
    [https_proxy] = [e for e in env if e["name"] == "HTTPS_PROXY"]
    assert https_proxy == {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "corp-proxy", "key": "https"}}}
    assert {"name": "NO_PROXY", "value": f".corp,{control_host}"} in env and "HTTP_PROXY" not in str(env)

    defaults = InjectionConfig.from_file(_injection_config(render({}), tmp_path))
    plain = sidecar_container(defaults)
    assert not {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} & {e["name"] for e in plain["env"]}
    assert not any(a.startswith("--ca-bundle") for a in plain["args"])


@pytest.mark.parametrize("url", ["https://proxy.corp:3129", "socks5://proxy.corp:1080", "socks5h://proxy.corp"])
def test_the_chart_takes_https_and_socks5_proxies(render: Render, tmp_path: Path, url: str) -> None:
    egress = {"httpsProxy": url, "httpProxy": url}
    config = InjectionConfig.from_file(_injection_config(render({"injection.sidecar.egress": egress}), tmp_path))
    env = {e["name"]: e.get("value") for e in sidecar_container(config)["env"]}
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == url
    settings = Egress.from_environment(env)  # and the sidecar reads them as meant
    assert settings.https_proxy is not None and settings.https_proxy.scheme == url.partition(":")[0]
    assert settings.proxy_for("http", "vllm.ml", 8000) == settings.https_proxy


def _injection_config(objects: list[dict[str, Any]], tmp_path: Path) -> Path:
    config_map = next(o for o in objects if o["metadata"]["name"].endswith("-injection") and o["kind"] == "ConfigMap")
    path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
    path.write_text(config_map["data"]["config.json"])
    return path


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics for the operators the chart uses."""
    for expr in selector.get("matchExpressions", []):
        has = labels.get(expr["key"]) in expr["values"]
        if (expr["operator"] == "In") != has:
            return False
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_webhook_selects_labelled_namespaces_except_system_and_its_own(render: Render) -> None:
    [webhook] = one(render({"injection.excludedNamespaces": ["legacy"]}), "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["clientConfig"]["service"]["path"] == "/llmroute-inject"

    def namespace(name: str, **labels: str) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": name, **labels}

    enabled = {"llmroute.io/injection": "enabled"}
    assert _selects(webhook["namespaceSelector"], namespace("shop", **enabled))
    assert not _selects(webhook["namespaceSelector"], namespace("shop"))
    for excluded in ("kube-system", "llmroute-system", "legacy"):
        assert not _selects(webhook["namespaceSelector"], namespace(excluded, **enabled))
    assert _selects(webhook["objectSelector"], {"app": "storefront"})
    assert not _selects(webhook["objectSelector"], {"llmroute.io/inject": "false"})


def test_generated_certificate_is_trusted_for_the_service_name(render: Render) -> None:
    objects = render()
    secret = one(objects, "Secret")["data"]
    [webhook] = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    assert webhook["clientConfig"]["caBundle"] == secret["ca.crt"]
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(base64.b64decode(secret["tls.crt"]))
        key.write_bytes(base64.b64decode(secret["tls.key"]))
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cadata=base64.b64decode(webhook["clientConfig"]["caBundle"]).decode())
    _handshake(client, server, "llmroute.llmroute-system.svc")
    _handshake(client, server, "llmroute-replicas.llmroute-system.svc")  # sidecars dial the headless name
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(client, server, "elsewhere.example.com")


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, hostname: str) -> None:
    """A TLS handshake over memory BIOs: what the API server does when it calls the webhook Service."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end, out, peer_in in (("client", tls_client, c_out, s_in), ("server", tls_server, s_out, c_in)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_cert_manager_mode_injects_the_ca_and_skips_the_helm_secret(render: Render) -> None:
    objects = render(VALUE_SETS["cert-manager-self-signed"])
    assert not by_kind(objects, "Secret")
    certificates = {c["metadata"]["name"]: c["spec"] for c in by_kind(objects, "Certificate")}
    issuers = {i["metadata"]["name"]: i["spec"] for i in by_kind(objects, "Issuer")}
    # A self-signed CA signs the serving certificate, so renewing the serving certificate keeps the CA.
    assert certificates["llmroute-ca"]["isCA"] is True
    assert issuers[certificates["llmroute-ca"]["issuerRef"]["name"]] == {"selfSigned": {}}
    certificate = certificates["llmroute"]
    assert "llmroute.llmroute-system.svc" in certificate["dnsNames"]
    assert certificate["secretName"] == "llmroute-tls"
    assert issuers[certificate["issuerRef"]["name"]] == {"ca": {"secretName": "llmroute-ca"}}
    webhook = one(objects, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "llmroute-system/llmroute"
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"]
    issued = render(VALUE_SETS["cert-manager-cluster-issuer"])
    assert not by_kind(issued, "Issuer")
    assert one(issued, "Certificate")["spec"]["issuerRef"] == {
        "name": "corp-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }


def test_injected_sidecar_gets_the_otel_variables(render: Render, tmp_path: Path) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    config_map = next(
        o
        for o in render({"injection.sidecar.otel": otel})
        if o["metadata"]["name"].endswith("-injection") and o["kind"] == "ConfigMap"
    )
    (tmp_path / "config.json").write_text(config_map["data"]["config.json"])
    env = sidecar_container(InjectionConfig.from_file(tmp_path / "config.json"))["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert values["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert values["OTEL_RESOURCE_ATTRIBUTES"] == "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
    # The kubelet expands $(POD_NAME) only from variables defined before it.
    names = [e["name"] for e in env]
    assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")

    default = next(o for o in render({}) if o["metadata"]["name"].endswith("-injection") and o["kind"] == "ConfigMap")
    (tmp_path / "config.json").write_text(default["data"]["config.json"])
    env = sidecar_container(InjectionConfig.from_file(tmp_path / "config.json"))["env"]
    assert not [e for e in env if e["name"].startswith("OTEL_")]  # tracing stays off by default
