"""The last applied control-plane table on disk, so a sidecar restarted without an operator still serves
(and the bootstrap copy the operator keeps per namespace, for a new pod that has none).

The file holds API keys: it is written atomically with mode 0600 and read back as-is.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from llmroute.v1 import routes_pb2

STATE_FILE = "routes.pb"
POLICIES_FILE = "policies.pb"
"""The last applied policy set: a sidecar restarted while the operator is away enforces it on no grant
(admitting nothing against its quotas) rather than enforcing nothing."""


def save(state_dir: Path, response: routes_pb2.RouteResponse, name: str = STATE_FILE) -> None:
    """Replace the saved `name` (the table, or the policies) with `response` (a private temp file, fsync,
    rename)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".routes-", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(response.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, state_dir / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(state_dir: Path) -> routes_pb2.RouteResponse | None:
    """The saved table, or None when there is none (a corrupt file raises DecodeError)."""
    return load_file(state_dir / STATE_FILE)


def load_file(path: Path) -> routes_pb2.RouteResponse | None:
    """A serialized RouteResponse (the saved table, or the namespace's bootstrap copy); None when absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return routes_pb2.RouteResponse.FromString(data)
