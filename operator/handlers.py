"""The kopf side: login, the LLMRoute index, and event handlers that only tell the Controller what changed.

No change-detecting handlers and no finalizers: kopf never patches an LLMRoute, so nothing can get
stuck while the operator is down; deletions show up as the index losing the object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from llmroute.model.policy_schema import PLURAL as POLICIES
from llmroute.model.schema import GROUP, PLURAL, VERSION

from .controller import Controller
from .kubeapi import KubeAPI
from .reconcile import RouteObject
from .secrets import referenced_secrets

INDEX = "llmroutes"  # the kwarg name under which kopf passes the index to handlers
POLICY_INDEX = "llmpolicies"


def build_registry(
    controller: Controller,
    api: KubeAPI,
    *,
    watch_namespaces: bool,
    on_namespace: Callable[[str, Mapping[str, str] | None], None] | None = None,
) -> kopf.OperatorRegistry:
    """A registry with the operator's handlers; `watch_namespaces` adds the namespace watch (cluster-wide mode),
    which also tells `on_namespace` each namespace's labels (None when it is deleted)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """In-cluster ServiceAccount or KUBECONFIG (plain http too), shared with the operator's own client."""

        def relogin() -> kopf.ConnectionInfo:
            info: kopf.ConnectionInfo | None = kopf.login_via_client(**kwargs)
            if info is None:
                raise kopf.LoginError("the kubernetes client library is not installed")
            return info

        info = relogin()
        api.connect(info, relogin)
        return info

    @kopf.index(GROUP, VERSION, PLURAL, id=INDEX, registry=registry)
    async def index_route(body: kopf.Body, **_: Any) -> dict[str, RouteObject]:
        route = RouteObject.from_body(body)
        return {route.namespace: route}

    def policies_indexed(kwargs: dict[str, Any]) -> None:
        """Reconciles read the policies too: hand them kopf's latest policy index before any trigger."""
        if controller.policies is not None:
            controller.policies.indexed(kwargs[POLICY_INDEX])

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def route_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        policies_indexed(kwargs)
        controller.route_event(type, RouteObject.from_body(body), kwargs[INDEX])

    @kopf.index(GROUP, VERSION, POLICIES, id=POLICY_INDEX, registry=registry)
    async def index_policy(body: kopf.Body, **_: Any) -> dict[str, RouteObject]:
        policy = RouteObject.from_body(body)
        return {policy.namespace: policy}

    @kopf.on.event(GROUP, VERSION, POLICIES, registry=registry)
    async def policy_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        controller.policy_event(type, RouteObject.from_body(body), kwargs[POLICY_INDEX], kwargs[INDEX])

    def referenced(**kwargs: Any) -> bool:
        routes = kwargs[INDEX].get(kwargs["namespace"], ())
        return kwargs["name"] in referenced_secrets(r.spec for r in routes)

    @kopf.on.event("", "v1", "secrets", when=referenced, registry=registry)
    async def secret_event(type: str, body: kopf.Body, **kwargs: Any) -> None:
        policies_indexed(kwargs)
        data = None if type == "DELETED" else {k: str(v) for k, v in (body.get("data") or {}).items()}
        controller.secret_event(body.metadata.namespace or "", body.metadata.name or "", data)

    if watch_namespaces:

        @kopf.on.event("", "v1", "namespaces", registry=registry)
        async def namespace_event(type: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
            """Handlers run only once kopf's index is complete: from now on, a namespace without routes has none."""
            if type != "DELETED":
                policies_indexed(kwargs)
                controller.namespace_seen(name, kwargs[INDEX])
            if on_namespace is not None:
                on_namespace(name, None if type == "DELETED" else dict(body.metadata.labels))

    return registry
