"""The client side of a SOCKS5 tunnel (RFC 1928), with no authentication or a user name and password (RFC 1929):
the proxy connects to the backend and relays bytes, so what the sidecar sends inside (TLS for https) is its own.
`socks5h` hands the proxy the backend's name to resolve; `socks5` resolves it here and hands over the address."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from llmroute.sidecar.upstream.egress import Proxy
from llmroute.sidecar.upstream.handshake import Handshake
from llmroute.sidecar.upstream.neterrors import ConnectError, ProxyError

VERSION = 5
NO_AUTHENTICATION, USERNAME_PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT = 0x01
IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04
REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
"""RFC 1928 section 6: what a reply's REP field means."""


async def destination(proxy: Proxy, host: str, port: int) -> bytes:
    """The request's ATYP, DST.ADDR and DST.PORT for host:port: an IP literal as an address; a name as a name
    for socks5h, else as the first address it resolves to here (ConnectError when it resolves to none)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if proxy.scheme == "socks5h":
            name = host.encode("idna")
            if len(name) > 255:
                raise ConnectError(f"{host}: a name longer than 255 bytes cannot be sent to a SOCKS5 proxy") from None
            return bytes((DOMAIN, len(name))) + name + port.to_bytes(2, "big")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectError(f"{host}:{port}: {exc}") from None
        address = ipaddress.ip_address(infos[0][4][0])
    kind = IPV4 if address.version == 4 else IPV6
    return bytes((kind,)) + address.packed + port.to_bytes(2, "big")


async def handshake(stream: Handshake, host: str, port: int, target: bytes) -> None:
    """Negotiate authentication and ask the proxy to connect to `target` (from `destination`); ProxyError with
    the reason when the proxy refuses (its credentials, its rules, or the backend unreachable from it)."""
    proxy = stream.proxy
    methods = bytes((NO_AUTHENTICATION, USERNAME_PASSWORD)) if proxy.credentials else bytes((NO_AUTHENTICATION,))
    stream.send(bytes((VERSION, len(methods))) + methods)
    version, method = await stream.exactly(2, "instead of choosing an authentication method")
    if version != VERSION:
        raise ProxyError(f"proxy {proxy} does not speak SOCKS5 (it answered version {version})")
    if method == NO_ACCEPTABLE:
        offered = "no authentication or a user name and password" if proxy.credentials else "no authentication"
        raise ProxyError(f"proxy {proxy} accepts none of the authentication methods offered ({offered})")
    if method == USERNAME_PASSWORD and proxy.credentials is not None:
        user, password = proxy.credentials
        stream.send(bytes((1, len(user))) + user + bytes((len(password),)) + password)
        _, status = await stream.exactly(2, "after the user name and password (wrong credentials?)")
        if status != 0:
            raise ProxyError(f"proxy {proxy} refused the user name and password")
    elif method != NO_AUTHENTICATION:
        raise ProxyError(f"proxy {proxy} chose authentication method {method}, which was not offered")
    stream.send(bytes((VERSION, CONNECT, 0)) + target)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    awaiting = f"instead of answering CONNECT {authority}"
    version, reply, _, kind = await stream.exactly(4, awaiting)
    if version != VERSION:
        raise ProxyError(f"proxy {proxy} answered CONNECT {authority} with SOCKS version {version}")
    if reply != 0:
        why = REPLIES.get(reply, f"reply {reply}")
        raise ProxyError(f"proxy {proxy} could not connect to {authority}: {why}")
    if kind == DOMAIN:
        size = (await stream.exactly(1, awaiting))[0]
    elif kind in (IPV4, IPV6):
        size = 4 if kind == IPV4 else 16
    else:
        raise ProxyError(f"proxy {proxy} answered CONNECT {authority} with address type {kind}")
    await stream.exactly(size + 2, awaiting)  # BND.ADDR and BND.PORT: where the proxy connected from
