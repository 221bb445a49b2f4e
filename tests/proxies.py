"""A third-party proxy server for egress tests: pproxy (PyPI), run as its own process on 127.0.0.1, speaking
SOCKS5 (RFC 1928/1929) or HTTP, plain or inside TLS. Its verbose log names every destination it connected to,
which is how a test sees that a call went through it, and to which name or address."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.egress import PrivateCA

# pproxy's main() installs uvloop and then asks for the current loop, which uvloop 0.21+ refuses; hiding uvloop
# makes it run on asyncio's own loop, which is all a test proxy needs.
_RUN = (
    "import asyncio, sys; sys.modules['uvloop'] = None; asyncio.set_event_loop(asyncio.new_event_loop());"
    " from pproxy.server import main; main()"
)
_DESTINATION = re.compile(r"^\S+ \S+ -> (\S+)$", re.MULTILINE)
_SERVING = re.compile(r"^Serving on \S+ 127\.0\.0\.1:(\d+) ", re.MULTILINE)
_started = itertools.count()


@dataclass
class ThirdPartyProxy:
    """A running pproxy: `url` (credentials included when it has some) and the log it writes."""

    url: str
    log: Path

    def destinations(self) -> list[str]:
        """Each `host:port` the proxy connected to for a client, in order."""
        return _DESTINATION.findall(self.log.read_text())


@contextlib.asynccontextmanager
async def pproxy(
    where: Path, scheme: str, *, credentials: str | None = None, tls: PrivateCA | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[ThirdPartyProxy]:
    """pproxy serving `scheme` ("socks5" or "http") on a port of its choosing, requiring `credentials`
    ("user:password") when given, inside TLS with `tls`'s server certificate when given; `host` is the name in
    the URL."""
    listen = f"{scheme}{'+ssl' if tls else ''}://127.0.0.1:0" + (f"#{credentials}" if credentials else "")
    argv = [sys.executable, "-c", _RUN, "-l", listen, "--auth", "0", "-v"]  # --auth 0: every connection authenticates
    if tls is not None:
        argv += ["--ssl", f"{tls.cert},{tls.key}"]
    log = where / f"pproxy-{next(_started)}.log"
    process = await asyncio.to_thread(_start, argv, log)
    try:
        port = await _listening(process, log)
        url_scheme = "https" if tls is not None else scheme
        userinfo = f"{credentials}@" if credentials else ""
        yield ThirdPartyProxy(f"{url_scheme}://{userinfo}{host}:{port}", log)
    finally:
        process.terminate()
        await asyncio.to_thread(process.wait, 10)


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each log line in the file as it is written
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environment)


async def _listening(process: subprocess.Popen[bytes], log: Path) -> int:
    """The port pproxy bound (its log's first line says), once it listens; a wide margin for a loaded machine."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text)
        if found := _SERVING.search(text):
            return int(found.group(1))
        if process.poll() is not None or "failed" in text:
            raise RuntimeError(f"pproxy did not start: {text}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"pproxy did not listen within 60s: {await asyncio.to_thread(log.read_text)}")
