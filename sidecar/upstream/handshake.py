"""The sidecar's side of a proxy handshake (HTTP CONNECT or SOCKS5): a protocol that buffers what the proxy
says until the handshake reads it, on a plain or TLS connection alike, before the connection is handed to the
HTTP client (tunnel.connect_via)."""

from __future__ import annotations

import asyncio
from typing import cast

from llmroute.sidecar.upstream.egress import Proxy
from llmroute.sidecar.upstream.neterrors import ProxyError

MAX_HEAD = 16 * 1024
"""Longest answer head a proxy may send to CONNECT."""


class Handshake(asyncio.Protocol):
    """Bytes from the proxy, read by exact counts (SOCKS5) or up to a blank line (HTTP); ProxyError when the
    proxy hangs up first, naming `proxy` and what was awaited."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._ended: str | None = None  # why no more bytes will come
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        self._ended = "closed the connection"
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = f"broke the connection: {exc}" if exc is not None else "closed the connection"
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def _more(self, awaiting: str) -> None:
        if self._ended is not None:
            raise ProxyError(f"proxy {self.proxy} {self._ended} {awaiting}")
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    async def exactly(self, size: int, awaiting: str) -> bytes:
        """The next `size` bytes."""
        while len(self._buffer) < size:
            await self._more(awaiting)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def head(self, awaiting: str) -> bytes:
        """An HTTP answer head, up to and including its blank line."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD:
                raise ProxyError(f"proxy {self.proxy} sent an answer head longer than {MAX_HEAD} bytes")
            await self._more(awaiting)
        return await self.exactly(end + 4, awaiting)

    def finish(self, after: str) -> asyncio.Transport:
        """The connection, once the handshake is over; ProxyError if the proxy said more than it should have,
        or already closed the tunnel (a request written into it would wait for its timeout instead)."""
        if self._buffer:
            raise ProxyError(f"proxy {self.proxy} sent bytes after {after}")
        if self._ended is not None:
            raise ProxyError(f"proxy {self.proxy} {self._ended} after {after}")
        assert self.transport is not None
        return self.transport
