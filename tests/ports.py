"""Ports for the processes a test starts with a fixed listen address (operators, sidecars, API servers).

A port from `bind(port 0)` comes from the kernel's ephemeral range, which every outgoing connection on the
machine draws its local port from as well: between the check and the child process's own bind (a second or
two of interpreter start-up), another process's connection could take it. These ports are drawn below that
range, where only listeners that name a port bind.
"""

from __future__ import annotations

import random
import socket
import sys
from pathlib import Path

LOWEST = 10_000
"""The lowest port drawn (below it: well-known and registered services)."""
_given: set[int] = set()


def _ephemeral_start() -> int:
    """Where the kernel's ephemeral range begins (32768 unless the machine says otherwise)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, below the ephemeral range, not handed out before by this test run."""
    top = max(_ephemeral_start() - 1, LOWEST + 1000)
    for _ in range(1000):
        port = random.randint(LOWEST, top)
        if port in _given:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port between {LOWEST} and {top} on {host}")


if __name__ == "__main__":  # `python3 tests/ports.py N`: N such ports on one line (tests/apiserver/run.sh)
    print(*(free_port() for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1)))
