"""Addresses of a replicated service: a comma-separated list of HOST:PORT, each name resolved to all its addresses.

A headless Service name resolves to every ready replica, so a client given that one name can pick any
replica and move to another when its own goes away. The name is kept with each address: TLS checks
the server's certificate against the name, not the IP dialled. Clients rank replicas by rendezvous
hashing of their own name, so a fleet spreads evenly, and when a replica goes away only its own
clients move (each to its next-ranked replica).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One replica to dial: `target` (IP:PORT, or HOST:PORT when it did not resolve) and the `name` given for it."""

    target: str
    name: str


def split_addresses(value: str) -> tuple[tuple[str, int], ...]:
    """`a:1,b:2` as ((host, port), ...); raises ValueError for an entry without a numeric port."""
    out = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{entry!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("no address given")
    return tuple(out)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def resolve(addresses: Sequence[tuple[str, int]]) -> list[Endpoint]:
    """Every address of every entry, in order, without repeats; a name that does not resolve stays as it is."""
    loop = asyncio.get_running_loop()
    endpoints: list[Endpoint] = []
    for host, port in addresses:
        if _is_ip(host):
            endpoints.append(Endpoint(_join(host, port), host))
            continue
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("cannot resolve %s: %s", host, exc)
            endpoints.append(Endpoint(_join(host, port), host))
            continue
        endpoints.extend(Endpoint(_join(str(info[4][0]), port), host) for info in infos)
    return list(dict.fromkeys(endpoints))


def ranked(endpoints: Sequence[Endpoint], client: str) -> list[Endpoint]:
    """The endpoints in this client's order of preference (rendezvous hashing: stable, and even over clients)."""
    # A cryptographic hash: CRC32's linearity makes the weights of similar addresses correlate (tested:
    # one of three replicas got half the clients).
    return sorted(endpoints, key=lambda e: (_weight(client, e.target), e.target), reverse=True)


def _weight(client: str, target: str) -> bytes:
    return hashlib.blake2b(f"{client}|{target}".encode(), digest_size=8).digest()
