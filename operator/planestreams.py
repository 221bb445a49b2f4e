"""The control plane's stream server (go-control-plane's server): StreamRoutes, nonces, ACK and NACK per type.

One stream carries every resource type (Envoy's ADS): a request with a new type_url subscribes to
that type, and each type has its own versions, nonces and memory of the versions this pod rejected,
so a pod is never sent a version it NACKed. Responses are state of the world: whenever the snapshot
cache says a namespace changed, each subscription gets its current resource unless it has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from llmroute.v1 import load_pb2, routes_pb2

from .auth import Authenticator, Identity
from .planecache import Resource, SnapshotCache, type_of
from .planehooks import PlaneMetrics, identify

log = logging.getLogger(__name__)
_M = TypeVar("_M", routes_pb2.RouteRequest, load_pb2.LoadReport)

# How many rejected versions are remembered per pod and type, and how long a pod that went away is remembered.
NACK_MEMORY = 8
POD_MEMORY_SECONDS = 3600.0


@dataclass(slots=True)
class PodMemory:
    """What outlives a stream: per type, the versions this pod rejected (version -> resource, message)."""

    nacks: dict[str, OrderedDict[str, tuple[Resource, str]]] = field(default_factory=dict)
    streams: int = 0
    left_at: float = 0.0

    def rejected(self, type_url: str) -> OrderedDict[str, tuple[Resource, str]]:
        return self.nacks.setdefault(type_url, OrderedDict())


@dataclass(eq=False, slots=True)
class Subscription:
    """One resource type on one stream: what the sidecar has, should have, ACKed, and was last sent."""

    type_url: str
    has: str  # the version the sidecar has, or will have once it applies what was sent
    nacks: OrderedDict[str, tuple[Resource, str]]
    desired: Resource | None = None
    acked: Resource | None = None
    sent: Resource | None = None
    sent_nonce: str = ""

    def needs_push(self) -> bool:
        d = self.desired
        return d is not None and d.version != self.has and d.version not in self.nacks


@dataclass(eq=False, slots=True)
class Stream:
    """One open StreamRoutes call and its subscriptions by type."""

    namespace: str
    pod: str
    labels: dict[str, str]
    memory: PodMemory
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class StreamServer:
    """Serves StreamRoutes from the snapshot cache; `on_change(namespace)` when counts or ACKs move."""

    def __init__(self, cache: SnapshotCache, authenticator: Authenticator, metrics: PlaneMetrics) -> None:
        self.cache = cache
        self.authenticator = authenticator
        self.metrics = metrics
        self.on_change: Callable[[str], None] = lambda namespace: None
        self._streams: dict[str, set[Stream]] = {}
        self._pods: dict[tuple[str, str], PodMemory] = {}
        self._nonce = 0
        self.connected = 0

    def streams(self, namespace: str) -> set[Stream]:
        """The namespace's open streams."""
        return self._streams.get(namespace, set())

    def close_all(self) -> None:
        """End every route stream cleanly (the sidecars keep what they have)."""
        for streams in self._streams.values():
            for stream in streams:
                stream.closed = True
                stream.wake.set()

    def push(self, namespace: str) -> None:
        """Give every subscription of the namespace its current resource; time the change until all ACK it."""
        published_at = self.cache.take_change(namespace)
        waiting: set[object] = set()
        for stream in self.streams(namespace):
            for sub in stream.subscriptions.values():
                sub.desired = self.cache.resource(namespace, sub.type_url, stream.labels)
                if sub.needs_push():
                    waiting.add(sub)
                    stream.wake.set()
                elif sub.desired is not None and sub.desired.version == sub.has:
                    # It already has this resource (a reconnect after an operator restart): nothing to
                    # send, and it counts as programmed, since it runs exactly this version.
                    sub.acked = sub.desired
        self.metrics.published(namespace, published_at, waiting)
        self.on_change(namespace)

    async def first(self, requests: AsyncIterator[_M], context: grpc.aio.ServicerContext[Any, Any]) -> _M:
        """The stream's first message, which must name the node; the stream is aborted otherwise."""
        first = await anext(requests, None)
        if first is None or not first.HasField("node") or not first.node.pod:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the node")
        return first

    async def identify(self, context: grpc.aio.ServicerContext[Any, Any], node: routes_pb2.Node) -> Identity:
        """Who the stream is (auth callback)."""
        return await identify(self.authenticator, context, node)

    def _pod(self, namespace: str, pod: str) -> PodMemory:
        memory = self._pods.get((namespace, pod))
        if memory is None:
            if len(self._pods) > 1024 and len(self._pods) > 2 * self.connected:
                cutoff = time.monotonic() - POD_MEMORY_SECONDS
                self._pods = {k: v for k, v in self._pods.items() if v.streams or v.left_at > cutoff}
            memory = self._pods[(namespace, pod)] = PodMemory()
        return memory

    def _subscribe(self, stream: Stream, request: routes_pb2.RouteRequest) -> Subscription:
        type_url = type_of(request.type_url)
        sub = Subscription(type_url, request.version_info, stream.memory.rejected(type_url))
        sub.desired = self.cache.resource(stream.namespace, type_url, stream.labels)
        if sub.desired is not None and sub.desired.version == request.version_info:
            sub.acked = sub.desired  # reconnect with the current resource: nothing to send
        stream.subscriptions[type_url] = sub
        return sub

    async def stream_routes(
        self, requests: AsyncIterator[routes_pb2.RouteRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """The StreamRoutes handler."""
        first = await self.first(requests, context)
        identity = await self.identify(context, first.node)
        namespace = identity.namespace
        memory = self._pod(namespace, first.node.pod)
        stream = Stream(namespace=namespace, pod=first.node.pod, labels=dict(first.node.labels), memory=memory)
        self._subscribe(stream, first)
        self._streams.setdefault(namespace, set()).add(stream)
        memory.streams += 1
        self.connected += 1
        self.metrics.connected.set(self.connected)
        log.info("sidecar %s/%s connected (has version %r)", namespace, stream.pod, first.version_info)
        reader = asyncio.create_task(self._read_answers(stream, requests))
        self.on_change(namespace)
        try:
            # Only now, with the stream counted in the route's status, tell the sidecar it is subscribed.
            await context.send_initial_metadata(())
            while not stream.closed:
                due = next((s for s in stream.subscriptions.values() if s.needs_push()), None)
                if due is not None:
                    await self._send(due, context)
                    continue
                await stream.wake.wait()
                stream.wake.clear()
        finally:
            reader.cancel()
            self._streams[namespace].discard(stream)
            memory.streams -= 1
            memory.left_at = time.monotonic()
            self.connected -= 1
            self.metrics.connected.set(self.connected)
            for sub in stream.subscriptions.values():
                self.metrics.converged(namespace, sub)
            log.info("sidecar %s/%s disconnected", namespace, stream.pod)
            self.on_change(namespace)

    async def _send(self, sub: Subscription, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        resource = sub.desired
        assert resource is not None
        self._nonce += 1
        sub.sent, sub.sent_nonce, sub.has = resource, str(self._nonce), resource.version
        await context.write(resource.response(sub.sent_nonce))
        self.metrics.pushes.inc()

    async def _read_answers(self, stream: Stream, requests: AsyncIterator[routes_pb2.RouteRequest]) -> None:
        """Book the stream's ACKs and NACKs, and new subscriptions, until it closes."""
        try:
            async for request in requests:
                sub = stream.subscriptions.get(type_of(request.type_url))
                if sub is None:
                    self._subscribe(stream, request)
                    stream.wake.set()
                elif request.response_nonce == sub.sent_nonce and sub.sent is not None:
                    self._answer(stream, sub, request)
                else:
                    continue  # answers a response that was since superseded
                self.on_change(stream.namespace)
        finally:
            stream.closed = True
            stream.wake.set()

    def _answer(self, stream: Stream, sub: Subscription, request: routes_pb2.RouteRequest) -> None:
        sent = sub.sent
        assert sent is not None
        if request.error_detail:
            sub.has = request.version_info
            sub.nacks[sent.version] = (sent, request.error_detail)
            while len(sub.nacks) > NACK_MEMORY:
                sub.nacks.popitem(last=False)
            self.metrics.nacks.inc()
            log.warning(
                "sidecar %s/%s rejected %s version %s: %s",
                stream.namespace,
                stream.pod,
                sub.type_url,
                sent.version,
                request.error_detail,
            )
            self.metrics.converged(stream.namespace, sub, rejected=True)
        elif request.version_info == sent.version:
            sub.acked = sent
            if sub.desired is not None and sent.version == sub.desired.version:
                self.metrics.converged(stream.namespace, sub)
