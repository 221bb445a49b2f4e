"""A CONNECT tunnel through an HTTP proxy (RFC 9110 9.3.6): a socket that reaches host:port, over which the
caller then speaks TLS to the backend itself, so the proxy sees only the name and port, never the traffic."""

from __future__ import annotations

import asyncio
import socket

from llmroute.sidecar.upstream.egress import Proxy
from llmroute.sidecar.upstream.neterrors import ProxyError

_MAX_HEAD = 16 * 1024


async def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A connected non-blocking socket tunnelled to host:port; ProxyError if the proxy cannot be reached or
    answers anything but a 2xx (the status line is in the message, the credentials are not)."""
    loop = asyncio.get_running_loop()
    sock = await _connect(loop, proxy)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        head = f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"
        if proxy.authorization is not None:
            head += f"proxy-authorization: {proxy.authorization}\r\n"
        await loop.sock_sendall(sock, (head + "\r\n").encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            piece = await loop.sock_recv(sock, 4096)
            if not piece:
                raise ProxyError(f"proxy {proxy} closed the connection instead of answering CONNECT {authority}")
            answer += piece
            if len(answer) > _MAX_HEAD:
                raise ProxyError(f"proxy {proxy} sent an answer head longer than {_MAX_HEAD} bytes")
        status_line = answer.partition(b"\r\n")[0]
        fields = status_line.split(None, 2)
        status = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
        if not status_line.startswith(b"HTTP/1.") or not 200 <= status < 300:
            shown = status_line[:200].decode("latin-1", "replace")
            raise ProxyError(f"proxy {proxy} refused the tunnel to {authority}: {shown}")
        if answer.index(b"\r\n\r\n") + 4 != len(answer):
            raise ProxyError(f"proxy {proxy} sent bytes after its CONNECT answer")
    except OSError as exc:
        sock.close()
        raise ProxyError(f"proxy {proxy}: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


async def _connect(loop: asyncio.AbstractEventLoop, proxy: Proxy) -> socket.socket:
    """A socket connected to the proxy, trying each of its addresses in turn."""
    try:
        infos = await loop.getaddrinfo(proxy.host, proxy.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProxyError(f"proxy {proxy}: {exc}") from None
    failure: OSError | None = None
    for family, kind, protocol, _, address in infos:
        sock = socket.socket(family, kind, protocol)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            failure = exc
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ProxyError(f"proxy {proxy}: {failure or 'no address'}")
