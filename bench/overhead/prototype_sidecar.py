"""Prototype (bench only): `llmroute sidecar` with every httpx.AsyncClient on `RawTransport`, and httpx's
one INFO log line per request switched off; unchanged otherwise.

Run as `python -m bench.overhead.prototype_sidecar SIDECAR-ARGS...` from the repository root.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import httpx

from bench.overhead.fast_transport import RawTransport


class _RawClient(httpx.AsyncClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("transport", RawTransport())
        super().__init__(*args, **kwargs)


if __name__ == "__main__":
    logging.getLogger("httpx").setLevel(logging.WARNING)
    httpx.AsyncClient = _RawClient  # type: ignore[misc]  # the sidecar looks it up at call time
    from llmroute.sidecar.main import run_sidecar

    sys.exit(run_sidecar(sys.argv[1:]))
