"""Automatic sidecar injection: a kopf mutating admission webhook on Pods.

`inject_pod` is the pure part: it returns the pod with the LLMRoute sidecar added (a native sidecar,
i.e. an init container with restartPolicy Always, or a regular container), or None when the pod must
be left alone (opted out, already injected, or in an excluded namespace). `register_injection` wires
it into a kopf registry as `@kopf.on.mutate('pods')`; `configure_webhook_server` points kopf's
admission server at the certificate the chart mounts. Which namespaces are eligible is decided by
the MutatingWebhookConfiguration's namespaceSelector (label `llmroute.io/injection=enabled`); the
handler re-checks the namespaces that must never be injected.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import kopf

from .bootstrap import BOOTSTRAP_KEY, BOOTSTRAP_SECRET
from .egress import EgressConfig

WEBHOOK_ID = "llmroute-inject"
"""The handler id; kopf serves it at path /llmroute-inject, which the chart's webhook calls."""

SIDECAR_NAME = "llmroute-sidecar"
OPT_OUT_LABEL = "llmroute.io/inject"
NAMESPACE_LABEL = "llmroute.io/injection"
INJECTED_LABEL = "llmroute.io/sidecar"
"""Set to `injected` on every injected pod: the chart's PodMonitor selects sidecars by it."""
NEVER_INJECTED = frozenset({"kube-system", "kube-public", "kube-node-lease"})

LISTEN_PORT = 4000
ADMIN_PORT = 4001
TOKEN_AUDIENCE = "llmroute"
TOKEN_DIR = "/var/run/secrets/llmroute/token"
PODINFO_DIR = "/etc/llmroute/podinfo"
STATE_DIR = "/var/lib/llmroute"
CA_DIR = "/etc/llmroute/ca"
BOOTSTRAP_DIR = "/etc/llmroute/bootstrap"
VOLUME_BOOTSTRAP = "llmroute-bootstrap"
VOLUME_TOKEN = "llmroute-token"
VOLUME_PODINFO = "llmroute-podinfo"
VOLUME_STATE = "llmroute-state"
VOLUME_CA = "llmroute-ca"
BASE_URLS = {
    "OPENAI_BASE_URL": f"http://127.0.0.1:{LISTEN_PORT}/v1",
    "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{LISTEN_PORT}",
}
"""What each SDK's base URL is set to in app containers (OpenAI's includes /v1, Anthropic's does not)."""

Pod = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class InjectionConfig:
    """What the injected sidecar looks like; rendered by the chart into a JSON file for the operator."""

    image: str
    control_plane: str
    operator_namespace: str
    native: bool = True
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    token_expiration_seconds: int = 3600
    ca_config_map: str | None = None
    """The ConfigMap (key ca.crt) the operator keeps in each labelled namespace; None: --plaintext sidecars."""
    extra_args: tuple[str, ...] = ()
    passthrough: str = ""
    """The sidecar's --passthrough (the chart's injection.sidecar.passthrough); empty: the sidecar's default."""
    egress: EgressConfig = dataclasses.field(default_factory=EgressConfig)
    """Proxy and extra CAs of the sidecar's backend calls (the chart's injection.sidecar.egress)."""
    otel: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """OTEL_* variables of the sidecar (the chart's injection.sidecar.otel): an endpoint turns tracing on."""

    @classmethod
    def from_file(cls, path: Path) -> InjectionConfig:
        """Read the chart-rendered config (camelCase JSON keys, the chart's values names)."""
        data = json.loads(path.read_text())
        return cls(
            image=data["image"],
            control_plane=data["controlPlane"],
            operator_namespace=data["operatorNamespace"],
            native=data.get("mode", "native") == "native",
            image_pull_policy=data.get("imagePullPolicy", "IfNotPresent"),
            resources=data.get("resources", {}),
            token_expiration_seconds=int(data.get("tokenExpirationSeconds", 3600)),
            ca_config_map=data.get("caConfigMap") or None,
            extra_args=tuple(data.get("extraArgs", ())),
            passthrough=data.get("passthrough", ""),
            egress=EgressConfig.from_json(data.get("egress") or {}),
            otel=data.get("otel") or {},
        )


def should_inject(pod: Mapping[str, Any], namespace: str, config: InjectionConfig) -> bool:
    """False for excluded namespaces, pods labelled llmroute.io/inject=false, and pods already injected."""
    if namespace in NEVER_INJECTED or namespace == config.operator_namespace:
        return False
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get(OPT_OUT_LABEL) == "false":
        return False
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]}
    return SIDECAR_NAME not in names


def inject_pod(pod: Mapping[str, Any], namespace: str, config: InjectionConfig) -> Pod | None:
    """The pod with the sidecar, its volumes and the apps' SDK base URLs added; None to leave it as is."""
    if not should_inject(pod, namespace, config):
        return None
    result: Pod = copy.deepcopy(dict(pod))
    meta = result.setdefault("metadata", {})
    meta["labels"] = {**(meta.get("labels") or {}), INJECTED_LABEL: "injected"}
    spec = result.setdefault("spec", {})
    spec["containers"] = [_with_base_url(c) for c in spec.get("containers") or []]
    sidecar = sidecar_container(config)
    if config.native:
        spec["initContainers"] = [{**sidecar, "restartPolicy": "Always"}, *(spec.get("initContainers") or [])]
    else:
        spec["containers"] = [sidecar, *spec["containers"]]
    taken = {v.get("name") for v in spec.get("volumes") or []}
    spec["volumes"] = [*(spec.get("volumes") or []), *(v for v in _volumes(config) if v["name"] not in taken)]
    return result


def _with_base_url(container: Mapping[str, Any]) -> dict[str, Any]:
    """An app container's SDKs pointed at the sidecar, each base URL unless the container sets it already."""
    env = list(container.get("env") or [])
    taken = {e.get("name") for e in env}
    added = [{"name": name, "value": url} for name, url in BASE_URLS.items() if name not in taken]
    return {**container, "env": [*env, *added]} if added else dict(container)


def sidecar_container(config: InjectionConfig) -> dict[str, Any]:
    """The sidecar container: control-plane mode, identity from the downward API and a projected token."""
    args = [
        "sidecar",
        f"--control-plane={config.control_plane}",
        f"--listen=127.0.0.1:{LISTEN_PORT}",
        f"--admin-listen=$(POD_IP):{ADMIN_PORT}",
        f"--state-dir={STATE_DIR}",
        f"--token-file={TOKEN_DIR}/token",
        f"--labels-file={PODINFO_DIR}/labels",
        f"--bootstrap-file={BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}",
    ]
    mounts = [
        {"name": VOLUME_TOKEN, "mountPath": TOKEN_DIR, "readOnly": True},
        {"name": VOLUME_PODINFO, "mountPath": PODINFO_DIR, "readOnly": True},
        {"name": VOLUME_STATE, "mountPath": STATE_DIR},
        {"name": VOLUME_BOOTSTRAP, "mountPath": BOOTSTRAP_DIR, "readOnly": True},
    ]
    if config.passthrough:
        args.append(f"--passthrough={config.passthrough}")
    if config.ca_config_map:
        args.append(f"--tls-ca={CA_DIR}/ca.crt")
        mounts.append({"name": VOLUME_CA, "mountPath": CA_DIR, "readOnly": True})
    else:
        args.append("--plaintext")
    args.extend(config.egress.args())
    mounts.extend(config.egress.mounts())

    def probe(path: str, **extra: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": ADMIN_PORT}, "periodSeconds": 5, **extra}

    return {
        "name": SIDECAR_NAME,
        "image": config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": [*args, *config.extra_args],
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            *config.egress.env(config.control_plane),
            *_otel_env(config.otel),
        ],
        "ports": [{"name": "llmroute-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        "startupProbe": probe("/healthz", failureThreshold=60, periodSeconds=1),
        "livenessProbe": probe("/healthz", failureThreshold=3),
        "readinessProbe": probe("/readyz", failureThreshold=2),
        "resources": copy.deepcopy(dict(config.resources)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": mounts,
    }


def _otel_env(otel: Mapping[str, str]) -> list[dict[str, Any]]:
    """The configured OTEL_* variables; spans then name the pod and namespace unless they set resource
    attributes themselves (the variables above are expanded by the kubelet)."""
    env = [{"name": name, "value": value} for name, value in sorted(otel.items())]
    if otel and "OTEL_RESOURCE_ATTRIBUTES" not in otel:
        pod = "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"
        env.append({"name": "OTEL_RESOURCE_ATTRIBUTES", "value": pod})
    return env


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _volumes(config: InjectionConfig) -> list[dict[str, Any]]:
    """The token (audience llmroute), the pod's labels, the state dir, the bootstrap table and, with TLS, the CA."""
    volumes: list[dict[str, Any]] = [
        {
            "name": VOLUME_TOKEN,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": config.token_expiration_seconds,
                            "path": "token",
                        },
                    },
                ],
            },
        },
        {
            "name": VOLUME_PODINFO,
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
        {"name": VOLUME_STATE, "emptyDir": {"sizeLimit": "16Mi"}},
        # The namespace's last good table, delivered by the kubelet even when no operator replica answers.
        {"name": VOLUME_BOOTSTRAP, "secret": {"secretName": BOOTSTRAP_SECRET, "optional": True}},
    ]
    if config.ca_config_map:
        # Optional, as the bootstrap table: a pod created before the operator wrote it still starts, and the
        # kubelet fills the file in when the ConfigMap appears (the sidecar retries until then).
        volumes.append({"name": VOLUME_CA, "configMap": {"name": config.ca_config_map, "optional": True}})
    volumes.extend(config.egress.volumes())
    return volumes


def register_injection(registry: kopf.OperatorRegistry, config: InjectionConfig) -> None:
    """Register the Pod mutating handler (served by kopf at /llmroute-inject) in `registry`."""

    @kopf.on.mutate("pods", id=WEBHOOK_ID, operations=["CREATE"], registry=registry)
    def inject(body: kopf.Body, patch: kopf.Patch, namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
        mutated = inject_pod(body, namespace or "", config)
        if mutated is None:
            return
        logger.info(f"Injecting the {SIDECAR_NAME} ({'native' if config.native else 'container'}).")
        patch.fns.append(lambda raw: _replace(raw, mutated))


def _replace(raw: kopf.RawBody, mutated: Pod) -> None:
    """Make kopf's reference body equal to the mutated pod; kopf then diffs it into a JSONPatch."""
    target = cast(dict[str, Any], raw)
    target.clear()
    target.update(copy.deepcopy(mutated))


def configure_webhook_server(settings: kopf.OperatorSettings, listen: str, certfile: Path, keyfile: Path) -> None:
    """Serve admission webhooks over HTTPS on `listen` (host:port) with the chart-mounted certificate.

    The chart owns the MutatingWebhookConfiguration, so kopf must not manage it (`managed` stays None).
    """
    host, _, port = listen.rpartition(":")
    settings.admission.server = kopf.WebhookServer(
        addr=host.strip("[]") or None, port=int(port), certfile=str(certfile), pkeyfile=str(keyfile)
    )
    settings.admission.managed = None
