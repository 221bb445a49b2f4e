"""The injected sidecar's egress (the chart's injection.sidecar.egress): proxy variables (given as values, or
taken from a Secret of the app's namespace so that credentials stay out of the pod spec) and an extra CA
bundle from a ConfigMap of the app's namespace, as the container env, args, mount and volume the webhook adds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from llmroute.endpoints import split_addresses

CA_DIR = "/etc/llmroute/egress-ca"
VOLUME = "llmroute-egress-ca"


@dataclasses.dataclass(frozen=True, slots=True)
class SecretKey:
    """A key of a Secret in the injected pod's namespace."""

    name: str
    key: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> SecretKey | None:
        """From `{name, key}`; None when no name is given."""
        return cls(data["name"], data.get("key") or "url") if data and data.get("name") else None


@dataclasses.dataclass(frozen=True, slots=True)
class EgressConfig:
    """Proxy URLs (or the Secret keys holding them) and NO_PROXY for the sidecar's backend calls, and the
    ConfigMap (and key) of CAs to trust."""

    https_proxy: str = ""
    http_proxy: str = ""
    https_proxy_secret: SecretKey | None = None
    http_proxy_secret: SecretKey | None = None
    no_proxy: str = ""
    ca_config_map: str = ""
    ca_key: str = "ca.crt"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EgressConfig:
        """From the chart's camelCase keys."""
        return cls(
            https_proxy=data.get("httpsProxy", ""),
            http_proxy=data.get("httpProxy", ""),
            https_proxy_secret=SecretKey.from_json(data.get("httpsProxySecretRef")),
            http_proxy_secret=SecretKey.from_json(data.get("httpProxySecretRef")),
            no_proxy=data.get("noProxy", ""),
            ca_config_map=data.get("caConfigMap", ""),
            ca_key=data.get("caKey", "ca.crt"),
        )

    def env(self, control_plane: str) -> list[dict[str, Any]]:
        """HTTPS_PROXY / HTTP_PROXY (a value, or a Secret key: the Secret wins) / NO_PROXY when a proxy is set.
        The control plane's hosts join NO_PROXY: gRPC honours the proxy variables too, and the operator is
        reached inside the cluster."""
        proxies = (
            ("HTTPS_PROXY", self.https_proxy, self.https_proxy_secret),
            ("HTTP_PROXY", self.http_proxy, self.http_proxy_secret),
        )
        env: list[dict[str, Any]] = []
        for name, value, secret in proxies:
            if secret is not None:  # not optional: a pod whose Secret is missing waits for it, never goes direct
                env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}}})
            elif value:
                env.append({"name": name, "value": value})
        if not env:
            return []
        hosts = [host for host, _ in split_addresses(control_plane)]
        no_proxy = ",".join(h for h in [*self.no_proxy.split(","), *hosts] if h.strip())
        return [*env, {"name": "NO_PROXY", "value": no_proxy}] if no_proxy else env

    def args(self) -> list[str]:
        return [f"--ca-bundle={CA_DIR}/{self.ca_key}"] if self.ca_config_map else []

    def mounts(self) -> list[dict[str, Any]]:
        return [{"name": VOLUME, "mountPath": CA_DIR, "readOnly": True}] if self.ca_config_map else []

    def volumes(self) -> list[dict[str, Any]]:
        return [{"name": VOLUME, "configMap": {"name": self.ca_config_map}}] if self.ca_config_map else []
