"""The egress seam: what the backend client and passthrough need from an HTTP transport, and the one place
that picks the implementation (today transport.Pool; docs/performance.md says why not aiohttp's connector).

Implementations apply the sidecar's egress settings (proxy, trusted CAs, connection cap) and raise only
neterrors classes, so callers never see a particular client library's exceptions."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol

from llmroute.sidecar.upstream.egress import Egress
from llmroute.sidecar.upstream.transport import Pool, StreamedBody, Target


class Answer(Protocol):
    """An answer whose head has arrived; the body is read whole (`read`) or piece by piece (`receive`)."""

    status: int
    raw_headers: list[tuple[bytes, bytes]]

    @property
    def headers(self) -> dict[str, str]:
        """Headers by lower-case name."""
        ...

    @property
    def arrived(self) -> bool:
        """Whether the whole body has been received already."""
        ...

    def set_read_timeout(self, seconds: float) -> None:
        """How long each later body piece may take."""

    async def receive(self) -> bytes:
        """The next body piece as it arrived; b"" at the end."""
        ...

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; neterrors.AnswerTooLarge past `limit` bytes."""
        ...

    def close(self) -> None:
        """Done with the answer (idempotent): the connection is reused if the whole answer was read."""


class Transport(Protocol):
    """Sends HTTP/1.1 requests to backends and passthrough upstreams; returns once the answer's head arrived."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Awaitable[Answer]:
        """A call with the transport's own fixed headers (accept-encoding, user-agent)."""
        ...

    async def send(
        self,
        method: str,
        target: Target,
        headers: Mapping[str, str],
        body: bytes | StreamedBody = b"",
        *,
        fixed: bytes = ...,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> Answer:
        """A call to a parsed target, `fixed` headers first (b"" relays an app's headers untouched); a
        StreamedBody is sent as it arrives, at the pace the upstream reads it."""
        ...

    async def aclose(self) -> None:
        """Close idle connections; those in use close when their answer is done."""


def make_transport(egress: Egress, ca_pem: str | None = None) -> Transport:
    """The transport for one backend (`ca_pem`: its own CA bundle, trusted besides the sidecar's) or for
    passthrough: connections per origin capped and routed as `egress` says."""
    context = egress.ssl_context(ca_pem) if ca_pem is not None else None
    return Pool(egress=egress, ssl_context=context)
