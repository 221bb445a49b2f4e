"""The secrets a control-plane `Route` message carries (API keys, CA bundles) as the resolvers that
model.resolve_keys takes: one reading of the wire form for the sidecar and the operator's bootstrap copy."""

from __future__ import annotations

from llmroute.model import Backend, CaResolver, KeyResolver, SecretValue
from llmroute.v1 import routes_pb2


def sent_secrets(message: routes_pb2.Route, env_keys: KeyResolver | None = None) -> tuple[KeyResolver, CaResolver]:
    """Resolvers over `message`'s api_keys and ca_bundles (by backend name); `env_keys` resolves apiKeyEnv
    backends (None: they get no key). A Secret-backed backend the message has nothing for is a LookupError."""
    keys, cas = dict(message.api_keys), dict(message.ca_bundles)

    def key(backend: Backend, namespace: str) -> SecretValue | None:
        ref = backend.api_key_secret_ref
        if ref is None:
            return env_keys(backend, namespace) if env_keys is not None else None
        if backend.name not in keys:
            raise LookupError(f"the control plane sent no key for Secret {ref.name!r} key {ref.key!r}")
        return SecretValue(keys[backend.name])

    def ca(backend: Backend, namespace: str) -> SecretValue:
        if backend.name not in cas:
            ref = backend.ca_secret_ref
            where = f"Secret {ref.name!r} key {ref.key!r}" if ref is not None else "it"
            raise LookupError(f"the control plane sent no CA bundle for {where}")
        return SecretValue(cas[backend.name])

    return key, ca
