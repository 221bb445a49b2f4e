"""The operator's gRPC control plane: pushes per-pod routing tables and policies to sidecars, collects load.

State of the world, like Envoy's ADS, split the way go-control-plane is: a snapshot cache of typed
resources per namespace (planecache), a stream server owning nonces and ACK/NACK per type
(planestreams), and callbacks for auth and metrics (planehooks). This class wires them to the gRPC
server and answers the operator's questions: which sidecars run a route, and their load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry

from llmroute.model import Route
from llmroute.model.policy import Policy, QuotaKey
from llmroute.supervise import Supervisor
from llmroute.v1 import load_pb2, rpc

from .auth import Authenticator
from .loadstore import BackendHealth, LoadStore, LoadTotals
from .planecache import SnapshotCache
from .planehooks import PlaneMetrics
from .planestreams import StreamServer
from .quotas import QuotaFigures, QuotaService
from .servingcert import ServingCertificate

log = logging.getLogger(__name__)

__all__ = ["BackendHealth", "ControlPlane", "NackMessage", "SidecarCounts"]

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
        self._supervisor = supervisor or Supervisor(log)
        self._pusher: asyncio.Task[None] | None = None
        self.authenticator = authenticator
        self.reconnect_grace = reconnect_grace
        self.report_interval = report_interval
        self.on_change: Callable[[str], None] | None = None
        self.port = 0
        self.cache = SnapshotCache(self._push, debounce=debounce, max_delay=max_delay)
        self.streams = StreamServer(self.cache, authenticator, PlaneMetrics(registry))
        self.streams.on_change = self._changed
        self._load = LoadStore()
        self.quotas = QuotaService(report_interval=report_interval)
        """Grants on the load streams; the operator runs `quotas.run` as a supervised loop."""
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
        self.cache.attach()
        server = grpc.aio.server(options=SERVER_OPTIONS)
        rpc.add_services(server, self.streams.stream_routes, self._stream_load)
        if tls_cert is not None or tls_key is not None:
            if tls_cert is None or tls_key is None:
                raise ValueError("TLS needs both a certificate and a key")
            self.port = server.add_secure_port(listen, ServingCertificate(tls_cert, tls_key).credentials())
        else:
            log.warning("control plane serving PLAINTEXT: API keys cross the network unencrypted (development only)")
            self.port = server.add_insecure_port(listen)
        await server.start()
        self._server = server
        self._pusher = self._supervisor.start("control-plane pushes", self.cache.run)
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
        self.cache.close()
        self.streams.close_all()
        await asyncio.sleep(0)  # let the route handlers return
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    # -- the operator's side -----------------------------------------------------------------------

    def publish(self, namespace: str, routes: Sequence[Route]) -> None:
        """Set the namespace's accepted routes (keys resolved); matching sidecars get them after the debounce.

        Publishing what is already published pushes nothing. Safe to call from any thread.
        """
        self._call(self.cache.set_routes, namespace, tuple(routes))

    def _call(self, method: Callable[[str, Any], None], namespace: str, value: Any) -> None:
        """Run a cache update on the server's loop (publish may come from other threads)."""
        if self._loop is not None and threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(method, namespace, value)
        else:
            method(namespace, value)

    def publish_policies(self, namespace: str, policies: Sequence[Policy]) -> None:
        """Set the policies that apply to the namespace's sidecars (its own and the operator namespace's)."""
        self._call(self._set_policies, namespace, tuple(policies))

    def _set_policies(self, namespace: str, policies: tuple[Policy, ...]) -> None:
        self.cache.set_policies(namespace, policies)
        self.quotas.set_policies(namespace, policies)

    def synced(self, namespaces: Sequence[str]) -> None:
        """Mark namespaces as having no routes or policies unless published: their sidecars then get empty ones.

        Until a namespace is published (or named here) its sidecars wait, rather than being told after an
        operator restart that they have no routes.
        """
        for name in namespaces:
            if self.cache.routes(name) is None:
                self.publish(name, ())
            if self.cache.policies(name) is None:
                self.publish_policies(name, ())

    def policy_sidecars(self, namespace: str, name: str, generation: int) -> SidecarCounts:
        """Sidecars that the policy applies to and that subscribe to policies: connected, ACKed a set carrying
        this generation, NACKed one (with why)."""
        key = f"{namespace}/{name}"
        connected = programmed = rejected = 0
        messages = []
        for ns in self.cache.namespaces():
            policies = self.cache.policies(ns) or ()
            if not any(p.namespace == namespace and p.name == name for p in policies):
                continue
            for stream in self.streams.streams(ns):
                sub = stream.subscriptions.get(rpc.TYPE_POLICIES)
                if sub is None:
                    continue
                connected += 1
                if sub.acked is not None and sub.acked.generations.get(key) == generation:
                    programmed += 1
                    continue
                for resource, message in reversed(sub.nacks.values()):
                    if resource.generations.get(key) == generation:
                        rejected += 1
                        messages.append(NackMessage(f"{ns}/{stream.pod}", message))
                        break
        return SidecarCounts(connected, programmed, rejected, tuple(sorted(messages, key=lambda m: m.pod)))

    def policies(self) -> list[Policy]:
        """Every policy published to some namespace, once each."""
        unique = {(p.namespace, p.name): p for ns in self.cache.namespaces() for p in self.cache.policies(ns) or ()}
        return [unique[k] for k in sorted(unique)]

    def quota_figures(self, key: QuotaKey) -> QuotaFigures | None:
        """What this replica's sidecars did with one quota in its current window."""
        return self.quotas.figures(key)

    def route_sidecars(self, namespace: str, name: str) -> SidecarCounts:
        """Sidecars selected by the route: connected, ACKed its current generation, NACKed it (with why)."""
        route = self._route(namespace, name)
        if route is None:
            return SidecarCounts(0, 0, 0)
        connected = programmed = rejected = 0
        messages = []
        for stream in self.streams.streams(namespace):
            if not route.selects(stream.labels):
                continue
            connected += 1
            sub = stream.subscriptions.get(rpc.TYPE_ROUTES)
            acked = None if sub is None else sub.acked
            if acked is not None and (
                acked.generations.get(name) == route.generation
                or (sub is not None and sub.desired is not None and acked.version == sub.desired.version)
            ):
                programmed += 1
                continue
            for resource, message in reversed(stream.memory.rejected(rpc.TYPE_ROUTES).values()):
                if resource.generations.get(name) == route.generation:
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
        out = {}
        for namespace in self.cache.namespaces():
            routes = self.cache.routes(namespace)
            if routes is not None:
                out[namespace] = routes
        return out

    def load_totals(self, namespace: str, route: str, backend: str) -> LoadTotals:
        """The backend's last minute of load reports from this replica's sidecars, summed."""
        return self._load.totals(namespace, route, backend)

    # -- publishing --------------------------------------------------------------------------------

    def _route(self, namespace: str, name: str) -> Route | None:
        return next((r for r in self.cache.routes(namespace) or () if r.name == name), None)

    def _push(self, namespace: str) -> None:
        self.streams.push(namespace)

    @property
    def reconnecting(self) -> bool:
        """Whether sidecars may still be reconnecting after this control plane started (RECONNECT_GRACE_S)."""
        return time.monotonic() < self._reconnecting_until

    def _grace_over(self) -> None:
        for namespace in self.cache.namespaces():
            self._changed(namespace)

    def _changed(self, namespace: str) -> None:
        if self.on_change is not None:
            try:
                self.on_change(namespace)
            except Exception:
                log.exception("on_change(%s) failed", namespace)

    # -- load reports ------------------------------------------------------------------------------

    async def _stream_load(
        self, requests: AsyncIterator[load_pb2.LoadReport], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        first = await self.streams.first(requests, context)
        identity = await self.streams.identify(context, first.node)
        sidecar = f"{identity.namespace}/{first.node.pod}"
        outbox: asyncio.Queue[load_pb2.LoadDirective] = asyncio.Queue()
        handle = self.quotas.opened(sidecar, identity.namespace, outbox.put_nowait)
        reader = asyncio.create_task(self._read_load(identity.namespace, sidecar, first, requests))
        try:
            while not reader.done():
                directive = asyncio.create_task(outbox.get())
                await asyncio.wait((directive, reader), return_when=asyncio.FIRST_COMPLETED)
                if directive.done():
                    await context.write(directive.result())
                else:
                    directive.cancel()
            reader.result()
        finally:
            reader.cancel()
            self.quotas.closed(sidecar, handle)

    async def _read_load(
        self, namespace: str, sidecar: str, first: load_pb2.LoadReport, requests: AsyncIterator[load_pb2.LoadReport]
    ) -> None:
        self._add_load(namespace, sidecar, first)
        async for report in requests:
            self._add_load(namespace, sidecar, report)

    def _add_load(self, namespace: str, sidecar: str, report: load_pb2.LoadReport) -> None:
        self.quotas.report(sidecar, report)
        if report.backends:
            self._load.add(namespace, report)
            self._changed(namespace)
