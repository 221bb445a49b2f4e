"""The operator's gRPC control plane: pushes per-pod routing tables to sidecars and collects their load.

State of the world, like Envoy's ADS: each response is a sidecar's whole table, versioned by a hash
of its content. Sidecars ACK or NACK every response; a pod is never sent a version it rejected.
Pushes after publish() are debounced (a supervised loop pushes what is due). Load reports are merged per
backend for the route status.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llmroute.model import Route
from llmroute.supervise import Supervisor
from llmroute.v1 import load_pb2, routes_pb2, rpc
from llmroute.waits import wait_event

from .auth import AuthenticationFailed, Authenticator, Identity
from .loadstore import BackendHealth, LoadStore, LoadTotals
from .servingcert import ServingCertificate
from .tables import Snapshot, Snapshots

log = logging.getLogger(__name__)
_M = TypeVar("_M", routes_pb2.RouteRequest, load_pb2.LoadReport)

__all__ = ["BackendHealth", "ControlPlane", "NackMessage", "SidecarCounts"]

# How many rejected versions are remembered per pod, and how long a pod that went away is remembered.
NACK_MEMORY = 8
POD_MEMORY_SECONDS = 3600.0

SERVER_OPTIONS = [
    # gRPC core queues a stream that arrives before the server has asked for the next call. The Python
    # server asks one call at a time from its event loop, so when a few thousand sidecars (re)connect
    # at once that queue passes the default soft limit of 1,000: from then on gRPC core holds new streams
    # unanswered (neither served nor refused), and the fleet never finishes connecting (bench/fanout:
    # about 1,850 of 2,000 ever connected). The limits are raised far above any fleet one replica serves.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass(frozen=True, slots=True)
class NackMessage:
    """Why one pod rejected a route's current generation."""

    pod: str
    message: str


@dataclass(frozen=True, slots=True)
class SidecarCounts:
    """A route's sidecars: connected and selected by it, running its current generation, rejecting it."""

    connected: int
    programmed: int
    rejected: int
    messages: tuple[NackMessage, ...] = ()


@dataclass(slots=True)
class _Pod:
    """What outlives a stream: the versions this pod rejected (version -> generations, message)."""

    nacks: OrderedDict[str, tuple[Snapshot, str]] = field(default_factory=OrderedDict)
    streams: int = 0
    left_at: float = 0.0


@dataclass(eq=False, slots=True)
class _Stream:
    """One open StreamRoutes call."""

    pod: str
    labels: dict[str, str]
    memory: _Pod
    has: str  # the version the sidecar has, or will have once it applies what was sent
    desired: Snapshot | None = None
    acked: Snapshot | None = None
    sent: Snapshot | None = None
    sent_nonce: str = ""
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def needs_push(self) -> bool:
        d = self.desired
        return d is not None and d.version != self.has and d.version not in self.memory.nacks


@dataclass(slots=True)
class _Convergence:
    """A published change, waiting for every stream it was pushed to to ACK."""

    published_at: float
    waiting: set[_Stream]


@dataclass(slots=True)
class _Namespace:
    snapshots: Snapshots | None = None  # None until the operator first publishes the namespace
    streams: set[_Stream] = field(default_factory=set)
    changed_at: float | None = None  # first publish not yet pushed
    convergence: list[_Convergence] = field(default_factory=list)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {} if registry is None else {"registry": registry}
        self.convergence = Histogram(
            "llmroute_config_convergence_seconds",
            "Time from publishing a route change to every connected sidecar it concerns ACKing it",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30),
            **kw,
        )
        self.connected = Gauge("llmroute_connected_sidecars", "Sidecars with an open route stream", **kw)
        self.pushes = Counter("llmroute_pushes", "Routing tables sent to sidecars", **kw)
        self.nacks = Counter("llmroute_nacks", "Routing tables rejected by sidecars", **kw)


RECONNECT_GRACE_S = 12.0
"""How long after it starts the operator waits for sidecars to reconnect before a route with none connected
reads Programmed=False: a sidecar's reconnect backoff is at most 10 s."""


class ControlPlane:
    """gRPC RouteDiscovery + LoadReporting server. publish() from the operator; status read back.

    Call everything from the event loop the server runs on, except publish(), which other threads may call.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        report_interval: float = 5.0,
        debounce: float = 0.1,
        max_delay: float = 10.0,
        reconnect_grace: float = RECONNECT_GRACE_S,
        registry: CollectorRegistry | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        """`supervisor` runs the push loop (the operator's reports its crashes); without one it gets its own."""
        self.authenticator = authenticator
        self.reconnect_grace = reconnect_grace
        self.report_interval = report_interval
        self.debounce = debounce
        self.max_delay = max_delay
        self.on_change: Callable[[str], None] | None = None
        self.port = 0
        self._metrics = _Metrics(registry)
        self._namespaces: dict[str, _Namespace] = {}
        self._pods: dict[tuple[str, str], _Pod] = {}
        self._load = LoadStore()
        self._supervisor = supervisor or Supervisor(log)
        self._due: dict[str, float] = {}  # namespace -> monotonic time its debounced push is due
        self._wake = asyncio.Event()
        self._pusher: asyncio.Task[None] | None = None
        self._nonce = 0
        self._connected = 0
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnecting_until = 0.0  # monotonic; set by start()
        self._thread: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, listen: str, *, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        """Serve on `listen` (host:port; port 0 picks a free one, see `port`), over TLS when cert and key are given.

        Without them the stream, which carries API keys, is plaintext: a warning says so.
        """
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        rpc.add_services(server, self._stream_routes, self._stream_load)
        if tls_cert is not None or tls_key is not None:
            if tls_cert is None or tls_key is None:
                raise ValueError("TLS needs both a certificate and a key")
            self.port = server.add_secure_port(listen, ServingCertificate(tls_cert, tls_key).credentials())
        else:
            log.warning("control plane serving PLAINTEXT: API keys cross the network unencrypted (development only)")
            self.port = server.add_insecure_port(listen)
        await server.start()
        self._server = server
        self._pusher = self._supervisor.start("control-plane pushes", self._push_due)
        self._reconnecting_until = time.monotonic() + self.reconnect_grace
        # Then the routes' status may turn from "reconnecting" to "no sidecars": have it written.
        self._loop.call_later(self.reconnect_grace, self._grace_over)
        log.info("control plane listening on %s (port %d, tls=%s)", listen, self.port, tls_cert is not None)

    async def stop(self, grace: float) -> None:
        """Stop serving: route streams end cleanly, other calls get `grace` seconds (sidecars keep their tables)."""
        if self._pusher is not None:
            self._pusher.cancel()
            await asyncio.gather(self._pusher, return_exceptions=True)
            self._pusher = None
        self._due.clear()
        for ns in self._namespaces.values():
            for stream in ns.streams:
                stream.closed = True
                stream.wake.set()
        await asyncio.sleep(0)  # let the route handlers return
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # -- the operator's side -----------------------------------------------------------------------

    def publish(self, namespace: str, routes: Sequence[Route]) -> None:
        """Set the namespace's accepted routes (keys resolved); matching sidecars get them after the debounce.

        Publishing what is already published pushes nothing. Safe to call from any thread.
        """
        routes = tuple(routes)
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._publish, namespace, routes)
        else:
            self._publish(namespace, routes)

    def synced(self, namespaces: Sequence[str]) -> None:
        """Mark namespaces as having no routes unless published: their sidecars then get an empty table.

        Until a namespace is published (or named here) its sidecars wait, rather than being told after an
        operator restart that they have no routes.
        """
        for name in namespaces:
            if self._ns(name).snapshots is None:
                self.publish(name, ())

    def route_sidecars(self, namespace: str, name: str) -> SidecarCounts:
        """Sidecars selected by the route: connected, ACKed its current generation, NACKed it (with why)."""
        ns = self._namespaces.get(namespace)
        route = self._route(namespace, name)
        if ns is None or route is None:
            return SidecarCounts(0, 0, 0)
        connected = programmed = rejected = 0
        messages = []
        for stream in ns.streams:
            if not route.selects(stream.labels):
                continue
            connected += 1
            acked = stream.acked
            if acked is not None and (
                acked.generations.get(name) == route.generation
                or (stream.desired is not None and acked.version == stream.desired.version)
            ):
                programmed += 1
                continue
            for snapshot, message in reversed(stream.memory.nacks.values()):
                if snapshot.generations.get(name) == route.generation:
                    rejected += 1
                    messages.append(NackMessage(stream.pod, message))
                    break
        return SidecarCounts(connected, programmed, rejected, tuple(sorted(messages, key=lambda m: m.pod)))

    def backend_health(self, namespace: str, name: str) -> list[BackendHealth]:
        """Each backend of the route over the last minute, merged over every sidecar that reported it."""
        route = self._route(namespace, name)
        if route is None:
            return []
        return self._load.health(namespace, name, [b.name for b in route.backends])

    def published(self) -> dict[str, tuple[Route, ...]]:
        """Every published namespace's accepted routes."""
        return {name: ns.snapshots.routes for name, ns in self._namespaces.items() if ns.snapshots is not None}

    def load_totals(self, namespace: str, route: str, backend: str) -> LoadTotals:
        """The backend's last minute of load reports from this replica's sidecars, summed."""
        return self._load.totals(namespace, route, backend)

    # -- publishing --------------------------------------------------------------------------------

    def _ns(self, namespace: str) -> _Namespace:
        return self._namespaces.setdefault(namespace, _Namespace())

    def _route(self, namespace: str, name: str) -> Route | None:
        ns = self._namespaces.get(namespace)
        if ns is None or ns.snapshots is None:
            return None
        return next((r for r in ns.snapshots.routes if r.name == name), None)

    def _publish(self, namespace: str, routes: tuple[Route, ...]) -> None:
        ns = self._ns(namespace)
        snapshots = Snapshots(routes)
        if ns.snapshots is not None and ns.snapshots.routes == snapshots.routes:
            return
        first = ns.snapshots is None
        ns.snapshots = snapshots
        if self._loop is None:
            return
        now = time.monotonic()
        if ns.changed_at is None:
            ns.changed_at = now
        delay = 0.0 if first else max(0.0, min(self.debounce, ns.changed_at + self.max_delay - now))
        self._due[namespace] = now + delay
        self._wake.set()

    async def _push_due(self) -> None:
        """Push each namespace whose debounce is over, until cancelled."""
        while True:
            now = time.monotonic()
            for namespace in [n for n, at in self._due.items() if at <= now]:
                del self._due[namespace]
                try:
                    self._push(namespace)
                except Exception:
                    self._due.setdefault(namespace, time.monotonic() + self.debounce)  # pushed after the restart
                    raise
            self._wake.clear()
            if self._due:
                await wait_event(self._wake, max(0.0, min(self._due.values()) - time.monotonic()))
            else:
                await self._wake.wait()

    def _push(self, namespace: str) -> None:
        """Give every stream of the namespace its current table; track the change until all ACK it."""
        ns = self._namespaces[namespace]
        published_at = ns.changed_at or time.monotonic()
        ns.changed_at = None
        assert ns.snapshots is not None
        waiting = set()
        for stream in ns.streams:
            stream.desired = ns.snapshots.for_labels(stream.labels)
            if stream.needs_push():
                waiting.add(stream)
                stream.wake.set()
            elif stream.desired.version == stream.has:
                # It already has this table (a reconnect after an operator restart): nothing to send,
                # and it counts as programmed, since it runs exactly this version.
                stream.acked = stream.desired
        if waiting:
            ns.convergence.append(_Convergence(published_at, waiting))
        self._changed(namespace)

    def _converged(self, namespace: str, stream: _Stream, *, rejected: bool = False) -> None:
        """The stream is up to date (or gone, or rejected its table): close the changes it completes."""
        ns = self._namespaces[namespace]
        now = time.monotonic()
        remaining = []
        for change in ns.convergence:
            if stream not in change.waiting:
                remaining.append(change)
                continue
            if rejected:
                continue  # a rejected change never converges: not observed
            change.waiting.discard(stream)
            if change.waiting:
                remaining.append(change)
            else:
                self._metrics.convergence.observe(now - change.published_at)
        ns.convergence = remaining

    @property
    def reconnecting(self) -> bool:
        """Whether sidecars may still be reconnecting after this control plane started (RECONNECT_GRACE_S)."""
        return time.monotonic() < self._reconnecting_until

    def _grace_over(self) -> None:
        for namespace in list(self._namespaces):
            self._changed(namespace)

    def _changed(self, namespace: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(namespace)
            except Exception:
                log.exception("on_change(%s) failed", namespace)

    # -- streams -----------------------------------------------------------------------------------

    async def _identify(self, context: grpc.aio.ServicerContext[Any, Any], node: routes_pb2.Node) -> Identity:
        """Authenticate the stream; abort it unless its token's namespace is the one the node claims."""
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value.removeprefix("Bearer ").strip()
        try:
            identity = await self.authenticator.authenticate(token, node)
        except AuthenticationFailed as exc:
            log.warning("refused sidecar %s/%s: %s", node.namespace, node.pod, exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except Exception as exc:
            log.warning("cannot authenticate sidecar %s/%s: %s", node.namespace, node.pod, exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "authentication is unavailable, retry later")
        if identity.namespace != node.namespace:
            log.warning(
                "refused sidecar %s: it claims namespace %r but its token is from %r",
                identity.subject,
                node.namespace,
                identity.namespace,
            )
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node namespace {node.namespace!r} does not match the token's namespace {identity.namespace!r}",
            )
        return identity

    async def _first(self, requests: AsyncIterator[_M], context: grpc.aio.ServicerContext[Any, Any]) -> _M:
        first = await anext(requests, None)
        if first is None or not first.HasField("node") or not first.node.pod:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the node")
        return first

    def _pod(self, namespace: str, pod: str) -> _Pod:
        memory = self._pods.get((namespace, pod))
        if memory is None:
            if len(self._pods) > 1024 and len(self._pods) > 2 * self._connected:
                cutoff = time.monotonic() - POD_MEMORY_SECONDS
                self._pods = {k: v for k, v in self._pods.items() if v.streams or v.left_at > cutoff}
            memory = self._pods[(namespace, pod)] = _Pod()
        return memory

    async def _stream_routes(
        self, requests: AsyncIterator[routes_pb2.RouteRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        first = await self._first(requests, context)
        identity = await self._identify(context, first.node)
        namespace = identity.namespace
        ns = self._ns(namespace)
        memory = self._pod(namespace, first.node.pod)
        stream = _Stream(pod=first.node.pod, labels=dict(first.node.labels), memory=memory, has=first.version_info)
        if ns.snapshots is not None:
            stream.desired = ns.snapshots.for_labels(stream.labels)
            if stream.desired.version == first.version_info:
                stream.acked = stream.desired  # reconnect with the current table: nothing to send
        ns.streams.add(stream)
        memory.streams += 1
        self._connected += 1
        self._metrics.connected.set(self._connected)
        log.info("sidecar %s/%s connected (has version %r)", namespace, stream.pod, first.version_info)
        reader = asyncio.create_task(self._read_answers(namespace, stream, requests))
        self._changed(namespace)
        try:
            # Only now, with the stream counted in the route's status, tell the sidecar it is subscribed.
            await context.send_initial_metadata(())
            while not stream.closed:
                if stream.needs_push():
                    await self._send(stream, context)
                    continue
                await stream.wake.wait()
                stream.wake.clear()
        finally:
            reader.cancel()
            ns.streams.discard(stream)
            memory.streams -= 1
            memory.left_at = time.monotonic()
            self._connected -= 1
            self._metrics.connected.set(self._connected)
            self._converged(namespace, stream)
            log.info("sidecar %s/%s disconnected", namespace, stream.pod)
            self._changed(namespace)

    async def _send(self, stream: _Stream, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        snapshot = stream.desired
        assert snapshot is not None
        self._nonce += 1
        stream.sent, stream.sent_nonce, stream.has = snapshot, str(self._nonce), snapshot.version
        await context.write(snapshot.response(stream.sent_nonce))
        self._metrics.pushes.inc()

    async def _read_answers(
        self, namespace: str, stream: _Stream, requests: AsyncIterator[routes_pb2.RouteRequest]
    ) -> None:
        """Book the stream's ACKs and NACKs until it closes."""
        try:
            async for request in requests:
                if request.response_nonce != stream.sent_nonce or stream.sent is None:
                    continue  # answers a response that was since superseded
                sent = stream.sent
                if request.error_detail:
                    stream.has = request.version_info
                    stream.memory.nacks[sent.version] = (sent, request.error_detail)
                    while len(stream.memory.nacks) > NACK_MEMORY:
                        stream.memory.nacks.popitem(last=False)
                    self._metrics.nacks.inc()
                    log.warning(
                        "sidecar %s/%s rejected version %s: %s",
                        namespace,
                        stream.pod,
                        sent.version,
                        request.error_detail,
                    )
                    self._converged(namespace, stream, rejected=True)
                elif request.version_info == sent.version:
                    stream.acked = sent
                    if stream.desired is not None and sent.version == stream.desired.version:
                        self._converged(namespace, stream)
                self._changed(namespace)
        finally:
            stream.closed = True
            stream.wake.set()

    async def _stream_load(
        self, requests: AsyncIterator[load_pb2.LoadReport], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        first = await self._first(requests, context)
        identity = await self._identify(context, first.node)
        await context.write(load_pb2.LoadDirective(report_interval_seconds=self.report_interval))
        self._add_load(identity.namespace, first)
        async for report in requests:
            self._add_load(identity.namespace, report)

    def _add_load(self, namespace: str, report: load_pb2.LoadReport) -> None:
        if report.backends:
            self._load.add(namespace, report)
            self._changed(namespace)
