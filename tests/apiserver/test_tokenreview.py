"""Sidecar identity with real tokens: the API server signs them (TokenRequest) and the operator checks
them with a real TokenReview, so only a token of shop's ServiceAccount, for audience llmroute, reads
shop's routes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from llmroute.v1 import routes_pb2
from tests.apiserver.conftest import OperatorProcess
from tests.apiserver.harness import ApiServer, eventually, subscribe, unique
from tests.ports import free_port


@pytest.fixture(scope="module")
def namespaces(apiserver: ApiServer, operator: OperatorProcess) -> tuple[str, str]:
    """(shop, blog): each with a ServiceAccount `app` and one route of its own."""
    shop, blog = apiserver.create_namespace(unique("shop")), apiserver.create_namespace(unique("blog"))
    for namespace, model in ((shop, "shop-chat"), (blog, "blog-chat")):
        apiserver.apply(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": namespace}},
            {
                "apiVersion": "llmroute.io/v1alpha1",
                "kind": "LLMRoute",
                "metadata": {"name": "chat", "namespace": namespace},
                "spec": {"models": [model], "backends": [
                    {"name": "sim", "provider": "openai", "url": "http://127.0.0.1:9/v1", "model": "m"}]},
            },
        )  # fmt: skip
    return shop, blog


@pytest.fixture
def sidecar(
    apiserver: ApiServer, operator: OperatorProcess, namespaces: tuple[str, str], tmp_path: Path
) -> Iterator[int]:
    """A real `llmroute sidecar` of shop presenting a TokenRequest token (audience llmroute); its admin port."""
    shop, _ = namespaces
    token = tmp_path / "token"
    token.write_text(apiserver.token(shop, "app", "llmroute"))
    admin = free_port()
    command = [
        sys.executable, "-m", "llmroute", "sidecar", f"--control-plane=127.0.0.1:{operator.grpc_port}",
        *operator.sidecar_flags(tmp_path),
        f"--namespace={shop}", "--pod-name=storefront-0", f"--token-file={token}",
        f"--listen=127.0.0.1:{free_port()}", f"--admin-listen=127.0.0.1:{admin}",
    ]  # fmt: skip
    with (tmp_path / "sidecar.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield admin
    finally:
        process.terminate()
        process.wait(timeout=30)


def served_routes(admin_port: int) -> list[dict[str, Any]]:
    """The routes in the sidecar's table (/debug/routes), [] while it has none or does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/debug/routes", timeout=5) as response:
            return list(json.load(response)["routes"])
    except OSError:
        return []


def test_a_sidecar_with_its_namespaces_projected_token_gets_that_namespaces_routes(
    sidecar: int, namespaces: tuple[str, str]
) -> None:
    shop, _ = namespaces
    routes = eventually(lambda: served_routes(sidecar), what="routes at the sidecar")
    assert [(r["namespace"], r["spec"]["models"]) for r in routes] == [(shop, ["shop-chat"])]


def test_a_token_of_another_namespace_is_refused(
    apiserver: ApiServer, operator: OperatorProcess, namespaces: tuple[str, str]
) -> None:
    shop, blog = namespaces
    blog_token = apiserver.token(blog, "app", "llmroute")
    assert (
        asyncio.run(subscribe(operator.grpc_port, blog_token, shop, operator.ca)) == grpc.StatusCode.PERMISSION_DENIED
    )
    # The same token, honestly claiming its own namespace, gets that namespace's routes only.
    table = asyncio.run(subscribe(operator.grpc_port, blog_token, blog, operator.ca))
    assert isinstance(table, routes_pb2.RouteResponse)
    assert [(r.namespace, json.loads(r.spec_json)["models"]) for r in table.table.routes] == [(blog, ["blog-chat"])]


@pytest.mark.parametrize("audience", ["https://kubernetes.default.svc.cluster.local", None], ids=["api", "forged"])
def test_a_token_for_another_audience_or_a_forged_one_is_refused(
    apiserver: ApiServer, operator: OperatorProcess, namespaces: tuple[str, str], audience: str | None
) -> None:
    shop, _ = namespaces
    token = apiserver.token(shop, "app", audience) if audience else "not-a-token"
    assert asyncio.run(subscribe(operator.grpc_port, token, shop, operator.ca)) == grpc.StatusCode.UNAUTHENTICATED
