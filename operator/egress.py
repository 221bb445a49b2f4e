"""The injected sidecar's egress (the chart's injection.sidecar.egress): proxy variables and an extra CA bundle
from a ConfigMap of the app's namespace, as the container env, args, mount and volume the webhook adds."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from llmroute.endpoints import split_addresses

CA_DIR = "/etc/llmroute/egress-ca"
VOLUME = "llmroute-egress-ca"


@dataclasses.dataclass(frozen=True, slots=True)
class EgressConfig:
    """Proxy URLs and NO_PROXY for the sidecar's backend calls, and the ConfigMap (and key) of CAs to trust."""

    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: str = ""
    ca_config_map: str = ""
    ca_key: str = "ca.crt"

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EgressConfig:
        """From the chart's camelCase keys."""
        return cls(
            https_proxy=data.get("httpsProxy", ""),
            http_proxy=data.get("httpProxy", ""),
            no_proxy=data.get("noProxy", ""),
            ca_config_map=data.get("caConfigMap", ""),
            ca_key=data.get("caKey", "ca.crt"),
        )

    def env(self, control_plane: str) -> list[dict[str, Any]]:
        """HTTPS_PROXY / HTTP_PROXY / NO_PROXY when a proxy is set. The control plane's hosts join NO_PROXY:
        gRPC honours the proxy variables too, and the operator is reached inside the cluster."""
        if not (self.https_proxy or self.http_proxy):
            return []
        hosts = [host for host, _ in split_addresses(control_plane)]
        no_proxy = ",".join(h for h in [*self.no_proxy.split(","), *hosts] if h.strip())
        pairs = (("HTTPS_PROXY", self.https_proxy), ("HTTP_PROXY", self.http_proxy), ("NO_PROXY", no_proxy))
        return [{"name": name, "value": value} for name, value in pairs if value]

    def args(self) -> list[str]:
        return [f"--ca-bundle={CA_DIR}/{self.ca_key}"] if self.ca_config_map else []

    def mounts(self) -> list[dict[str, Any]]:
        return [{"name": VOLUME, "mountPath": CA_DIR, "readOnly": True}] if self.ca_config_map else []

    def volumes(self) -> list[dict[str, Any]]:
        return [{"name": VOLUME, "configMap": {"name": self.ca_config_map}}] if self.ca_config_map else []
