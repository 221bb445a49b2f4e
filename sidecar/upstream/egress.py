"""How backend and passthrough calls leave the pod: which proxy (HTTPS_PROXY / HTTP_PROXY / ALL_PROXY /
NO_PROXY; an http, https or SOCKS5 proxy), which CAs are trusted (public roots plus SSL_CERT_FILE,
SSL_CERT_DIR, --ca-bundle and a backend's own CA), and the caps (open connections per backend, bytes of a
whole JSON answer). Read once at start; the transport asks it per origin."""

from __future__ import annotations

import base64
import functools
import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import certifi

MAX_CONNECTIONS = 256
"""Default cap on open connections to one backend (per sidecar); more calls wait for one to be free."""
MAX_ANSWER_BYTES = 128 * 1024 * 1024
"""Default cap on a whole (non-streamed) answer: 2,048 embeddings of 1,536 floats are about 66 MB of JSON."""

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


PROXY_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
"""The proxy URL schemes served (as curl and Python's HTTP clients read them) and each one's default port."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """An egress proxy. `http`: plain HTTP to the proxy (CONNECT tunnels for https backends, absolute-form
    requests for http ones); `https`: the same inside TLS to the proxy itself; `socks5` / `socks5h`: a SOCKS5
    tunnel (RFC 1928) for every backend, the name resolved here (socks5) or by the proxy (socks5h)."""

    host: str
    port: int
    authorization: str | None = field(default=None, repr=False)
    """`Proxy-Authorization` value from the URL's user:password (Basic), never logged."""
    scheme: str = "http"
    credentials: tuple[bytes, bytes] | None = field(default=None, repr=False)
    """SOCKS5 user name and password (RFC 1929) from the URL, never logged."""

    @property
    def socks(self) -> bool:
        """Whether the proxy speaks SOCKS5 rather than HTTP."""
        return self.scheme.startswith("socks")

    @property
    def tls(self) -> bool:
        """Whether the sidecar speaks TLS to the proxy itself (an https:// proxy URL)."""
        return self.scheme == "https"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" if self.scheme == "http" else f"{self.scheme}://{self.host}:{self.port}"


def parse_proxy(url: str, variable: str) -> Proxy:
    """A `scheme://[user:password@]host[:port]` proxy URL, scheme one of PROXY_PORTS (none means http;
    the port is the scheme's default when left out)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in PROXY_PORTS:
        shown = f"{scheme}://{parts.hostname or ''}"  # never the whole URL: it may hold credentials
        raise ValueError(f"{variable}: proxy scheme must be http, https, socks5 or socks5h, got {shown!r}")
    try:
        port = parts.port or PROXY_PORTS[scheme]
    except ValueError:
        raise ValueError(f"{variable}: invalid port in the proxy URL") from None
    if not parts.hostname:
        raise ValueError(f"{variable}: no host in the proxy URL")
    authorization = credentials = None
    if parts.username is not None:
        user, password = unquote(parts.username), unquote(parts.password or "")
        if scheme.startswith("socks"):
            credentials = (user.encode(), password.encode())
            if not all(0 < len(part) < 256 for part in credentials):
                raise ValueError(f"{variable}: a SOCKS5 user name and password must each be 1 to 255 bytes")
        else:
            authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return Proxy(parts.hostname, port, authorization, scheme, credentials)


class NoProxy:
    """NO_PROXY: comma-separated hosts that bypass the proxy. `*` alone bypasses it for all; `example.com`,
    `.example.com` and `*.example.com` each match example.com and every name under it; an IP literal matches
    that address and a CIDR block (`10.0.0.0/8`) any address in it, with no DNS lookup; `:PORT` after an
    entry restricts it to that port."""

    def __init__(self, value: str = "") -> None:
        self.everything = False
        self._names: list[tuple[str, int | None]] = []
        self._networks: list[tuple[_Network, int | None]] = []
        for raw in value.replace(" ", ",").split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self.everything = True
                continue
            host, port = _split_port(entry)
            try:
                self._networks.append((ipaddress.ip_network(host, strict=False), port))
                continue
            except ValueError:
                pass
            self._names.append((host.removeprefix("*").lstrip("."), port))

    def bypasses(self, host: str, port: int) -> bool:
        """Whether a call to host:port goes direct."""
        if self.everything:
            return True
        host = host.lower().rstrip(".")
        address: _IP | None
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            address = None
        if address is not None:
            return any(address in network and only in (None, port) for network, only in self._networks)
        return any((host == name or host.endswith("." + name)) and only in (None, port) for name, only in self._names)


def _split_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port` or a bare host/IP/CIDR (a bare IPv6 address keeps its colons)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, None


def _context(ca_files: tuple[Path, ...], ca_dirs: tuple[Path, ...] = ()) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certifi.where())
    for path in ca_files:
        try:
            context.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"CA bundle {path}: {exc}") from None
    for directory in ca_dirs:  # OpenSSL reads a directory's certificates when it verifies, by their hashed names
        if not directory.is_dir():
            raise ValueError(f"CA directory {directory} (SSL_CERT_DIR): not a directory")
        context.load_verify_locations(capath=str(directory))
    context.set_alpn_protocols(["http/1.1"])
    return context


_shared_context = functools.lru_cache(maxsize=4)(_context)


def _env(environ: Mapping[str, str], name: str) -> str:
    """The lower-case variable when set (even empty), else the upper-case one: curl's and Python's order."""
    value = environ.get(name)
    return value if value is not None else environ.get(name.upper(), "")


def _proxy(environ: Mapping[str, str], name: str) -> Proxy | None:
    """The proxy variable `name` names, else ALL_PROXY (as curl and httpx read it), else None."""
    for variable in (name, "all_proxy"):
        if value := _env(environ, variable):
            return parse_proxy(value, variable.upper())
    return None


@dataclass(frozen=True, slots=True)
class Egress:
    """Egress settings for every backend and passthrough call of one sidecar."""

    https_proxy: Proxy | None = None
    http_proxy: Proxy | None = None
    no_proxy: NoProxy = field(default_factory=NoProxy)
    ca_files: tuple[Path, ...] = ()
    """Extra trusted CA bundles (SSL_CERT_FILE, then --ca-bundle), added to the public roots."""
    ca_dirs: tuple[Path, ...] = ()
    """Extra trusted CA directories in OpenSSL's hashed layout (`c_rehash`, `openssl rehash`): SSL_CERT_DIR,
    colon-separated as OpenSSL reads it."""
    max_connections: int = MAX_CONNECTIONS
    max_answer_bytes: int = MAX_ANSWER_BYTES

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        ca_bundle: Path | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> Egress:
        """Settings from the proxy variables, SSL_CERT_FILE and SSL_CERT_DIR; ValueError naming the variable or
        file at fault (a CA file that does not load is refused here, at start, rather than on the first call)."""
        environ = os.environ if environ is None else environ
        cert_file = environ.get("SSL_CERT_FILE", "")
        files = tuple(Path(p) for p in (cert_file, ca_bundle) if p)
        dirs = tuple(Path(p) for p in environ.get("SSL_CERT_DIR", "").split(os.pathsep) if p)
        egress = cls(
            https_proxy=_proxy(environ, "https_proxy"),
            http_proxy=_proxy(environ, "http_proxy"),
            no_proxy=NoProxy(_env(environ, "no_proxy")),
            ca_files=files,
            ca_dirs=dirs,
            max_connections=max_connections,
            max_answer_bytes=max_answer_bytes,
        )
        egress.ssl_context()
        return egress

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy a call to scheme://host:port goes through, or None to go direct."""
        proxy = self.https_proxy if scheme == "https" else self.http_proxy
        if proxy is None or self.no_proxy.bypasses(host, port):
            return None
        return proxy

    def ssl_context(self, ca_pem: str | None = None) -> ssl.SSLContext:
        """A verifying client context trusting the public roots (certifi), the extra CA files and `ca_pem`
        (a backend's own CA bundle); ValueError naming a file or bundle that holds no usable certificate.
        Without `ca_pem` it is one context shared by every pool (the roots are loaded once)."""
        if ca_pem is None:
            return _shared_context(self.ca_files, self.ca_dirs)
        context = _context(self.ca_files, self.ca_dirs)
        try:
            context.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError):
            raise ValueError("the backend's CA bundle holds no usable PEM certificate") from None
        return context

    def describe(self) -> str:
        """One line for the start-up log: proxies (no credentials), NO_PROXY in use, CA files, caps."""
        via = ", ".join(f"{s} via {p}" for s, p in (("https", self.https_proxy), ("http", self.http_proxy)) if p)
        cas = ", ".join(str(p) for p in (*self.ca_files, *self.ca_dirs)) or "public roots only"
        return (
            f"egress: {via or 'direct'}; CAs: {cas}; at most {self.max_connections} connections per backend,"
            f" {self.max_answer_bytes} bytes per answer"
        )
