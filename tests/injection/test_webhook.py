"""Sidecar injection through the real HTTPS webhook: inject, skip, opt out, never twice, valid pods."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from llmroute.operator.injection import SIDECAR_NAME
from tests.injection.conftest import OPERATOR_NAMESPACE, ServedWebhook


def app_pod(**labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "storefront-", "labels": {"app": "storefront", **labels}},
        "spec": {
            "containers": [
                {"name": "app", "image": "shop/storefront:1"},
                {
                    "name": "worker",
                    "image": "shop/worker:1",
                    "env": [
                        {"name": "OPENAI_BASE_URL", "value": "http://x/v1"},
                        {"name": "ANTHROPIC_BASE_URL", "value": "http://y"},
                    ],
                },
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
    }


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


async def test_injects_a_native_sidecar_into_an_app_pod(webhook: ServedWebhook) -> None:
    pod = await webhook.admit(app_pod(), "shop")

    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    [sidecar] = pod["spec"]["initContainers"]
    assert sidecar["name"] == SIDECAR_NAME and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == webhook.config.image
    assert f"--control-plane={webhook.config.control_plane}" in sidecar["args"]
    assert env_of(sidecar)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env_of(sidecar)["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 4001}
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["resources"] == webhook.config.resources

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    [token] = volumes["llmroute-token"]["projected"]["sources"]
    assert token["serviceAccountToken"]["audience"] == "llmroute"
    assert volumes["llmroute-podinfo"]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.labels"
    assert "emptyDir" in volumes["llmroute-state"] and "data" in volumes
    mounts = {m["mountPath"] for m in sidecar["volumeMounts"]}
    args = set(sidecar["args"])
    assert {"--token-file=/var/run/secrets/llmroute/token/token", "--state-dir=/var/lib/llmroute"} <= args
    # The chart's default: requests no route names go to the public APIs, with the app's own key.
    assert "--passthrough=openai=https://api.openai.com/v1,anthropic=https://api.anthropic.com" in args
    assert {"/var/run/secrets/llmroute/token", "/var/lib/llmroute", "/etc/llmroute/podinfo"} <= mounts
    # The namespace's bootstrap table: mounted when the operator has written it, and no obstacle when not.
    assert volumes["llmroute-bootstrap"]["secret"] == {"secretName": "llmroute-bootstrap", "optional": True}
    assert "--bootstrap-file=/etc/llmroute/bootstrap/routes.pb" in args and "/etc/llmroute/bootstrap" in mounts

    app, worker = pod["spec"]["containers"]
    assert env_of(app)["OPENAI_BASE_URL"] == "http://127.0.0.1:4000/v1"
    assert env_of(app)["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4000"  # the Anthropic SDK appends /v1/...
    assert env_of(worker)["OPENAI_BASE_URL"] == "http://x/v1"  # the app's own settings win
    assert env_of(worker)["ANTHROPIC_BASE_URL"] == "http://y"
    assert len(worker["env"]) == 2
    assert pod["metadata"]["labels"]["llmroute.io/sidecar"] == "injected"


async def test_each_sdk_base_url_is_set_unless_the_container_sets_it(webhook: ServedWebhook) -> None:
    pod = app_pod()
    pod["spec"]["containers"][0]["env"] = [{"name": "OPENAI_BASE_URL", "value": "https://api.openai.com/v1"}]
    app = (await webhook.admit(pod, "shop"))["spec"]["containers"][0]
    assert env_of(app) == {
        "OPENAI_BASE_URL": "https://api.openai.com/v1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
    }


async def test_a_pod_is_never_injected_twice(webhook: ServedWebhook) -> None:
    once = await webhook.admit(app_pod(), "shop")
    review = await webhook.review(once, "shop")
    assert review["response"]["allowed"] is True
    assert "patch" not in review["response"]
    assert await webhook.admit(once, "shop") == once


@pytest.mark.parametrize("namespace", ["kube-system", OPERATOR_NAMESPACE])
async def test_system_and_operator_namespaces_are_skipped(webhook: ServedWebhook, namespace: str) -> None:
    pod = app_pod()
    assert await webhook.admit(pod, namespace) == pod


async def test_a_pod_labelled_inject_false_is_left_alone(webhook: ServedWebhook) -> None:
    pod = app_pod(**{"llmroute.io/inject": "false"})
    assert await webhook.admit(copy.deepcopy(pod), "shop") == pod


async def test_regular_container_mode_puts_the_sidecar_first(webhook: ServedWebhook) -> None:
    from dataclasses import replace

    from llmroute.operator.injection import inject_pod

    pod = inject_pod(app_pod(), "shop", replace(webhook.config, native=False))
    assert pod is not None
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    assert [c["name"] for c in pod["spec"]["containers"]] == [SIDECAR_NAME, "app", "worker"]
    assert "initContainers" not in pod["spec"]
    assert "restartPolicy" not in pod["spec"]["containers"][0]
