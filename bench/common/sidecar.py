"""Run `llmroute sidecar` as its own process on a route file, the way it is deployed."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import procs

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sidecar:
    """A running sidecar process and its ports."""

    process: procs.Process
    port: int
    admin_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def admin(self, path: str) -> str:
        """GET an admin endpoint (e.g. /metrics, /debug/backends) and return its body."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as response:
            body: bytes = response.read()
        return body.decode()


def start(
    name: str,
    routes: Path,
    workdir: Path,
    *,
    cpus: str | None = None,
    timeout: float = 20.0,
    llmroute: Path | None = None,
    flags: Sequence[str] = (),
) -> Sidecar:
    """Start `llmroute sidecar --routes routes [flags]` on free ports; return once /readyz says a table is loaded.
    `llmroute`: another build's executable (default: this virtualenv's)."""
    port, admin_port = procs.free_port(), procs.free_port()
    argv = [
        str(llmroute or Path(sys.executable).with_name("llmroute")),
        "sidecar",
        "--routes",
        str(routes),
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
        *flags,
    ]
    process = procs.start(name, procs.pinned(argv, cpus), workdir, cwd=ROOT)
    sidecar = Sidecar(process, port, admin_port)
    try:
        procs.wait_port(process, admin_port, timeout)
        deadline = time.monotonic() + timeout
        while True:
            try:
                sidecar.admin("/readyz")
                break
            except (urllib.error.URLError, OSError):
                process.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not ready within {timeout:g}s") from None
                time.sleep(0.05)
        procs.wait_port(process, port, timeout)
    except BaseException:
        process.stop()
        raise
    return sidecar
