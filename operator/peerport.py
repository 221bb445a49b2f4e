"""The replicas' own port: the leader's `POST /fleet` (grants out, quota reports back), authenticated by mTLS.

The POST hands out budget, so only another replica may make it. Every replica already holds the operator's
serving certificate (the chart's Secret, or cert-manager's) and its CA: on this port each side presents it,
as a service mesh's sidecars do. The server asks for a client certificate, which must chain to the CA and
name the replicas (a host of `--peers`, the headless Service the certificate is issued for); the client
checks the server's the same way. Nothing new to issue, store or rotate: a renewed pair is re-read from
its files. A request without a certificate gets 401, one whose certificate names someone else 403, each
counted in `llmroute_peer_requests_refused_total{reason}`; a certificate from another CA fails the
handshake. With `--plaintext` there is no certificate: the port serves HTTP to anyone, with a warning.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger(__name__)

REFUSALS = ("no_certificate", "wrong_identity")
LOG_EVERY_S = 60.0
"""Refusals are logged at most this often per reason (each is counted): a scanner cannot flood the log."""


class PeerTLS:
    """The operator's certificate as both sides of replica-to-replica TLS, re-read when its files change."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.files = (cert, key, ca)
        # Only the operator's CA is trusted, on both sides (never the system's public roots).
        self.server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server.verify_mode = ssl.CERT_OPTIONAL  # no certificate: answered 401 (a bad one fails the handshake)
        self.client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # checks the server's name and chain
        self._signature: tuple[tuple[int, int, int], ...] = ()
        self.refresh()

    def refresh(self) -> None:
        """Load the files again when they changed; new connections use them (the old CA stays trusted). A pair
        that does not load (a first one is a configuration error, and raises) is tried again at the next change."""
        first = not self._signature
        try:
            signature = tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in map(os.stat, self.files))
            if signature == self._signature:
                return
            self._signature = signature
            cert, key, ca = self.files
            for context in (self.server, self.client):
                context.load_cert_chain(cert, key)
                context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            if first:
                raise
            log.warning("peer certificate %s not reloaded (%s); keeping the previous one", self.files[0], exc)
            return
        if not first:
            log.info("peer certificate %s changed: new replica connections use it", self.files[0])


def names_in(certificate: dict[str, Any]) -> set[str]:
    """The DNS names and IP addresses a verified certificate (ssl's `getpeercert()` form) is issued for."""
    entries = certificate.get("subjectAltName") or ()
    return {str(value) for kind, value in entries if kind in ("DNS", "IP Address")}


class PeerServer:
    """Serves `/fleet` to the other replicas: over mTLS when given `tls`, else (--plaintext) to anyone."""

    def __init__(
        self,
        fleet: Callable[[bytes], bytes],
        peer_names: Collection[str],
        registry: CollectorRegistry,
        tls: PeerTLS | None = None,
    ) -> None:
        """`peer_names`: the names a replica's certificate must carry one of (the hosts of --peers)."""
        self._fleet = fleet
        self._names = set(peer_names)
        self._tls = tls
        self.refused = Counter(
            "llmroute_peer_requests_refused_total",
            "Requests to the replicas' peer port refused: no_certificate (401) or wrong_identity (403).",
            ["reason"],
            registry=registry,
        )
        for reason in REFUSALS:
            self.refused.labels(reason)
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (monotonic time of its last log line, since)
        app = web.Application()
        app.router.add_route("*", "/fleet", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._port = 0

    @property
    def port(self) -> int:
        """The port actually listened on."""
        return self._port

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0 picks a free port)."""
        if self._tls is None:
            log.warning(
                "replica peer port serves /fleet WITHOUT authentication (--plaintext): anything that reaches it "
                "can hand this replica's sidecars LLMPolicy grants; development only"
            )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self._tls.server if self._tls else None)
        await site.start()
        self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening."""
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "POST"):
            return web.Response(status=405, text="method not allowed\n", headers={"Allow": "GET, POST"})
        if self._tls is not None:
            refused = self._refusal(request)
            if refused is not None:
                return refused
        try:
            body = self._fleet(await request.read())
        except (ValueError, KeyError, TypeError):
            return web.Response(status=400, text="bad fleet request\n")
        return web.Response(body=body, content_type="application/json")

    def _refusal(self, request: web.Request) -> web.Response | None:
        """401 without a client certificate, 403 when it names none of the replicas; None for a replica."""
        transport = request.transport
        certificate = transport.get_extra_info("peercert") if transport is not None else None
        if not certificate:
            self._refuse("no_certificate", request, "no client certificate")
            return web.Response(
                status=401,
                text="401: this port takes requests from operator replicas only: present the operator's client "
                "certificate\n",
            )
        names = names_in(certificate)
        if not names & self._names:
            self._refuse("wrong_identity", request, f"a certificate for {sorted(names)}")
            replicas = ", ".join(sorted(self._names))
            text = f"403: the client certificate names none of the operator replicas ({replicas})\n"
            return web.Response(status=403, text=text)
        return None

    def _refuse(self, reason: str, request: web.Request, what: str) -> None:
        self.refused.labels(reason).inc()
        now = time.monotonic()
        last, unlogged = self._logged.get(reason, (float("-inf"), 0))
        if now - last < LOG_EVERY_S:
            self._logged[reason] = (last, unlogged + 1)
            return
        self._logged[reason] = (now, 0)
        more = f" ({unlogged} more since the last such line)" if unlogged else ""
        log.warning("refused %s %s from %s: %s%s", request.method, request.path, request.remote, what, more)
