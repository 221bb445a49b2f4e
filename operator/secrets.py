"""The Secrets that LLMRoutes name (apiKeySecretRef, tls.caSecretRef): a per-namespace cache and the key and
CA resolvers over it.

Only referenced Secrets are cached (the watch is filtered to them); a Secret that becomes referenced
while already existing is fetched once by the reconciler. Values never leave this module except as
`SecretValue`, whose repr hides them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any

from llmroute.model import Backend, SecretRef, SecretValue


def referenced_secrets(specs: Iterable[Any]) -> set[str]:
    """Names of the Secrets the given raw LLMRoute specs point at (API keys and CA bundles), valid or not."""
    names: set[str] = set()
    for spec in specs:
        backends = spec.get("backends") if isinstance(spec, Mapping) else None
        for backend in backends if isinstance(backends, list) else ():
            if not isinstance(backend, Mapping):
                continue
            tls = backend.get("tls")
            for ref in (backend.get("apiKeySecretRef"), tls.get("caSecretRef") if isinstance(tls, Mapping) else None):
                if isinstance(ref, Mapping) and isinstance(ref.get("name"), str):
                    names.add(ref["name"])
    return names


class SecretCache:
    """`data` of referenced Secrets by (namespace, name); None records a Secret known not to exist."""

    def __init__(self) -> None:
        self._data: dict[tuple[str, str], dict[str, str] | None] = {}

    def put(self, namespace: str, name: str, data: Mapping[str, str] | None) -> None:
        """Record a Secret's base64 `data` (None: deleted or not found)."""
        self._data[(namespace, name)] = dict(data) if data is not None else None

    def known(self, namespace: str, name: str) -> bool:
        """Whether the cache has an answer for this Secret (present or absent)."""
        return (namespace, name) in self._data

    def retain(self, namespace: str, names: set[str]) -> None:
        """Forget Secrets of the namespace no route references any more: nothing watches them now."""
        for key in [k for k in self._data if k[0] == namespace and k[1] not in names]:
            del self._data[key]

    def exists(self, namespace: str, name: str) -> bool:
        """Whether the Secret is known to exist."""
        return self._data.get((namespace, name)) is not None

    def __call__(self, backend: Backend, namespace: str) -> SecretValue | None:
        """KeyResolver: the decoded key for apiKeySecretRef; None for apiKeyEnv (the sidecar reads its env)."""
        ref = backend.api_key_secret_ref
        return None if ref is None else self.read(ref, namespace)

    def ca(self, backend: Backend, namespace: str) -> SecretValue:
        """CaResolver: the PEM of the backend's tls.caSecretRef."""
        assert backend.ca_secret_ref is not None
        return self.read(backend.ca_secret_ref, namespace)

    def read(self, ref: SecretRef, namespace: str) -> SecretValue:
        """The decoded text of a Secret key; LookupError naming what is missing (never the value)."""
        data = self._data.get((namespace, ref.name))
        if data is None:
            raise LookupError(f"Secret {namespace}/{ref.name} not found")
        if ref.key not in data:
            raise LookupError(f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
        try:
            return SecretValue(base64.b64decode(data[ref.key], validate=True).decode())
        except (binascii.Error, UnicodeDecodeError):
            raise LookupError(f"Secret {namespace}/{ref.name} key {ref.key!r} is not valid base64 text") from None
