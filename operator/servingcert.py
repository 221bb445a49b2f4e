"""The control plane's serving certificate, re-read from its files when they change (a renewed Secret).

The kubelet swaps a mounted Secret's files in place when the Secret changes (cert-manager renews it,
or a new one is installed); gRPC asks `fetch` for the certificate at every new TLS handshake, so new
connections get the new certificate without a restart, while established streams keep theirs.
A half-written pair (a certificate that does not match its key) is not taken: the last good pair stays.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

_Signature = tuple[tuple[int, int, int], ...]


class ServingCertificate:
    """A certificate and key pair on disk, served through gRPC's dynamic server credentials."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert = cert
        self.key = key
        self._lock = threading.Lock()  # gRPC calls fetch() from its own threads
        self._signature = self._stat()
        self._pair = self._read()  # raises: a first pair that does not load is a configuration error

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up a changed pair at the next handshake."""
        # grpc-stubs type the fetcher as never returning None; gRPC documents None as "keep the current one".
        return grpc.dynamic_ssl_server_credentials(self._configuration(self._pair), self.fetch)  # type: ignore[arg-type]

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's per-handshake question: a new configuration when the files changed, else None (keep it)."""
        with self._lock:
            try:
                signature = self._stat()
                if signature == self._signature:
                    return None
                pair = self._read()
            except (OSError, ssl.SSLError) as exc:  # tried again at the next handshake
                log.warning("serving certificate %s not reloaded (%s); keeping the previous one", self.cert, exc)
                return None
            self._signature = signature
            if pair == self._pair:
                return None
            self._pair = pair
        log.info("serving certificate %s changed: new connections get the new one", self.cert)
        return self._configuration(pair)

    def _stat(self) -> _Signature:
        stats = (os.stat(self.cert), os.stat(self.key))  # follows the kubelet's ..data symlink
        return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)

    def _read(self) -> tuple[bytes, bytes]:
        """(key, cert) bytes, checked to belong together."""
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.cert, self.key)
        return self.key.read_bytes(), self.cert.read_bytes()

    @staticmethod
    def _configuration(pair: tuple[bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([pair])
