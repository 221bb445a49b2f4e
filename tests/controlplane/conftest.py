"""Shared parts of the control-plane tests: a real ControlPlane on 127.0.0.1, routes, raw streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry

from llmroute.model import Route, SecretValue, parse_document
from llmroute.operator.auth import TokenReviewAuthenticator
from llmroute.operator.controlplane import ControlPlane
from llmroute.v1 import routes_pb2, rpc

# Test tokens and the ServiceAccount a TokenReview says each belongs to.
TOKENS = {
    "token-shop": "system:serviceaccount:shop:storefront",
    "token-bank": "system:serviceaccount:bank:ledger",
}


async def token_review(token: str) -> dict[str, Any]:
    """What the API server answers to a TokenReview of `token` (audience llmroute)."""
    if token not in TOKENS:
        return {"status": {"authenticated": False, "error": "invalid bearer token"}}
    return {"status": {"authenticated": True, "user": {"username": TOKENS[token]}, "audiences": ["llmroute"]}}


def make_route(
    namespace: str,
    name: str,
    *,
    models: tuple[str, ...] = ("chat",),
    generation: int = 1,
    key: str | None = None,
    selector: dict[str, str] | None = None,
    url: str = "https://api.example.com/v1",
    env_key: str | None = None,
) -> Route:
    """An accepted route with one backend; `key` plays the operator's resolved apiKeySecretRef."""
    backend: dict[str, Any] = {"name": "primary", "provider": "openai", "url": url, "model": "gpt-4.1"}
    if key is not None:
        backend["apiKeySecretRef"] = {"name": "llm-keys", "key": "openai"}
    if env_key is not None:
        backend["apiKeyEnv"] = env_key
    spec: dict[str, Any] = {"models": list(models), "backends": [backend]}
    if selector:
        spec["workloadSelector"] = {"matchLabels": selector}
    doc = {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": spec,
    }
    route = parse_document(doc)
    if key is not None:
        route = replace(route, backends=(replace(route.backends[0], api_key=SecretValue(key)),))
    return route


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until check() holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


PlaneFactory = Callable[..., Awaitable[ControlPlane]]


@pytest.fixture
async def make_plane(registry: CollectorRegistry) -> AsyncIterator[PlaneFactory]:
    """Start control planes (same registry, test-token authenticator); all are stopped at the end."""
    started: list[ControlPlane] = []

    async def make(listen: str = "127.0.0.1:0", **options: Any) -> ControlPlane:
        options.setdefault("report_interval", 0.1)
        options.setdefault("registry", registry)
        cp = ControlPlane(authenticator=TokenReviewAuthenticator(token_review), **options)
        await cp.start(listen)
        started.append(cp)
        return cp

    yield make
    for cp in started:
        await cp.stop(0)


@pytest.fixture
async def plane(make_plane: PlaneFactory) -> ControlPlane:
    return await make_plane()


class RawStream:
    """A hand-driven StreamRoutes call, to check the server's side of the protocol message by message."""

    def __init__(self, channel: grpc.aio.Channel, call: Any) -> None:
        self.channel = channel
        self.call = call
        self.received: asyncio.Queue[routes_pb2.RouteResponse] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.call:
            self.received.put_nowait(message)

    @classmethod
    async def open(
        cls, port: int, token: str, *, pod: str, namespace: str, version: str = "", labels: dict[str, str] | None = None
    ) -> RawStream:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        call = rpc.stream_routes(channel)(None, metadata=(("authorization", f"Bearer {token}"),))
        node = routes_pb2.Node(pod=pod, namespace=namespace, labels=labels or {})
        await call.write(routes_pb2.RouteRequest(node=node, version_info=version))
        return cls(channel, call)

    async def response(self, within: float = 2.0) -> routes_pb2.RouteResponse:
        return await asyncio.wait_for(self.received.get(), within)

    async def no_response(self, within: float = 0.4) -> None:
        await asyncio.sleep(within)
        assert self.received.empty(), f"unexpected message: {self.received.get_nowait()}"

    async def status(self) -> grpc.StatusCode:
        """How the server ended the call (waits for the end)."""
        await asyncio.gather(self._reader, return_exceptions=True)
        return await self.call.code()  # type: ignore[no-any-return]

    async def ack(self, response: routes_pb2.RouteResponse) -> None:
        await self.call.write(
            routes_pb2.RouteRequest(version_info=response.version_info, response_nonce=response.nonce)
        )

    async def nack(self, response: routes_pb2.RouteResponse, last_good: str, detail: str) -> None:
        await self.call.write(
            routes_pb2.RouteRequest(version_info=last_good, response_nonce=response.nonce, error_detail=detail)
        )

    async def close(self) -> None:
        self._reader.cancel()
        await self.channel.close(None)
