"""A tunnel through an egress proxy: an HTTP CONNECT (RFC 9110 9.3.6) to an http:// or, inside TLS to the proxy
itself, an https:// proxy, or a SOCKS5 CONNECT (socks.py). Over it the caller speaks to the backend itself (TLS
for https), so the proxy sees only the name and port, never the traffic."""

from __future__ import annotations

import asyncio
import ssl

from llmroute.sidecar.upstream import socks
from llmroute.sidecar.upstream.egress import Proxy
from llmroute.sidecar.upstream.handshake import Handshake
from llmroute.sidecar.upstream.neterrors import ConnectError, ProxyError


async def connect_via(
    proxy: Proxy,
    proxy_tls: ssl.SSLContext | None,
    host: str,
    port: int,
    protocol: asyncio.Protocol,
    tls: ssl.SSLContext | None,
) -> None:
    """Connect `protocol` to host:port through `proxy` (verified with `proxy_tls` when it is an https:// one),
    with TLS to the backend when `tls` is given. ProxyError until the tunnel stands; after that an OSError
    (ssl.SSLError among them) from the backend's TLS handshake."""
    loop = asyncio.get_running_loop()
    target = await socks.destination(proxy, host, port) if proxy.socks else b""  # a name resolved before connecting
    try:
        name = proxy.host if proxy_tls else None
        transport, stream = await loop.create_connection(
            lambda: Handshake(proxy), proxy.host, proxy.port, ssl=proxy_tls, server_hostname=name
        )
    except OSError as exc:  # refused, unreachable, DNS, or the proxy's own certificate
        raise ProxyError(f"proxy {proxy}: {exc}") from None
    try:
        if proxy.socks:
            await socks.handshake(stream, host, port, target)
        else:
            await _http_connect(stream, host, port)
        tunnel = stream.finish("its tunnel was set up")
        if tls is None:
            tunnel.set_protocol(protocol)
            protocol.connection_made(tunnel)
            return
        try:
            inner = await loop.start_tls(tunnel, protocol, tls, server_hostname=host)
        except TypeError as exc:  # CPython before 3.11.8 (gh-113214) fails TLS in TLS this way; uvloop does not
            raise ConnectError(f"TLS to {host}:{port} inside the proxy's TLS failed ({exc})") from None
        assert inner is not None  # typeshed allows None; asyncio and uvloop return the TLS transport or raise
        protocol.connection_made(inner)  # start_tls does not call it
    except BaseException:
        transport.abort()
        raise


async def _http_connect(stream: Handshake, host: str, port: int) -> None:
    """CONNECT host:port; ProxyError unless the proxy answers 2xx (its status line in the message, the
    credentials never)."""
    proxy = stream.proxy
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    # Spelled as curl sends them: some proxies (pproxy among them) match these names by their case.
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization is not None:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    stream.send((head + "\r\n").encode("latin-1"))
    answer = await stream.head(f"instead of answering CONNECT {authority}")
    status_line = answer.partition(b"\r\n")[0]
    fields = status_line.split(None, 2)
    status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    if not status_line.startswith(b"HTTP/1.") or not 200 <= status < 300:
        shown = status_line[:200].decode("latin-1", "replace")
        raise ProxyError(f"proxy {proxy} refused the tunnel to {authority}: {shown}")
