"""The operator's admin port, read-only and unauthenticated like any scrape target: /metrics (Prometheus),
/healthz (the process serves), /readyz, and GET /fleet (this replica's share of the fleet: counts, load
summaries and quota figures, never keys). The leader's POST /fleet, which hands out grants, goes to the
replicas' authenticated peer port instead (peerport.py); here every method but GET gets 405."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from llmroute.http import HTTPServer, Request, Response


class AdminServer:
    """Serves the admin endpoints; `ready()` decides /readyz (kopf watching and gRPC listening)."""

    def __init__(
        self, registry: CollectorRegistry, ready: Callable[[], bool], fleet: Callable[[], bytes] | None = None
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._fleet = fleet
        self._server = HTTPServer(self._handle)

    @property
    def port(self) -> int:
        """The port actually listened on."""
        port: int = self._server.port
        return port

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0 picks a free port)."""
        await self._server.start(host, port)

    async def stop(self) -> None:
        """Stop listening; admin requests are short, so no long grace."""
        await self._server.shutdown(1.0)

    async def _handle(self, request: Request) -> Response:
        if request.method != "GET":
            return Response(405, b"method not allowed\n", content_type="text/plain")
        if request.path == "/fleet" and self._fleet is not None:
            return Response(200, self._fleet(), content_type="application/json")
        if request.path == "/metrics":
            return Response(200, generate_latest(self._registry), content_type=CONTENT_TYPE_LATEST)
        if request.path == "/healthz":
            return Response(200, b"ok\n", content_type="text/plain")
        if request.path == "/readyz":
            if self._ready():
                return Response(200, b"ready\n", content_type="text/plain")
            return Response(503, b"not ready\n", content_type="text/plain")
        return Response(404, b"not found\n", content_type="text/plain")
