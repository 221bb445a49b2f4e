"""The CA bundle a sidecar trusts for the operator's certificate, read from a file that may change.

The injected file is a mounted ConfigMap the operator keeps and the kubelet refreshes in place, so the
bundle is read again before every dial (a sidecar that could not verify the operator picks up a
renewed CA at its next attempt) and compared while connected (a change means: reconnect with it).
The file may not exist yet in a new namespace (the volume is optional): that is a failed dial, retried.
"""

from __future__ import annotations

import ssl
from pathlib import Path


class TrustUnavailable(Exception):
    """The CA file cannot be read or holds no usable certificate: the operator cannot be verified now."""


def read_trust(path: Path) -> bytes:
    """The PEM bundle in `path`, checked to load as CA certificates; raises TrustUnavailable."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise TrustUnavailable(f"cannot read the CA bundle {path}: {exc.strerror or exc}") from None
    try:
        loaded = ssl.create_default_context(cadata=pem.decode("ascii")).cert_store_stats()["x509"]
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise TrustUnavailable(f"the CA bundle {path} holds no usable certificate: {exc}") from None
    if not loaded:
        raise TrustUnavailable(f"the CA bundle {path} holds no certificate")
    return pem
