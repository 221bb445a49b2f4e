"""The control plane's CA ConfigMap when the API server fails a write: the operator retries until it lands,
counts the failures, and says so once on its own Pod, where `kubectl describe pod` shows it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmroute.operator.catrust import certificates
from tests.controlplane.test_tls import chart_certificate
from tests.tools import helm_bin

from .conftest import NAMESPACES, OPERATOR_POD

if TYPE_CHECKING:
    from conftest import Bench

__all__ = ["helm_bin"]

CONFIG_MAP = "llmroute-ca"


async def _published(bench: Bench, namespace: str) -> list[str] | None:
    async with bench.kube.session.get(f"{bench.url}/api/v1/namespaces/{namespace}/configmaps/{CONFIG_MAP}") as got:
        return certificates((await got.json())["data"]["ca.crt"]) if got.status == 200 else None


async def _failure_events(bench: Bench) -> list[dict[str, Any]] | None:
    events = [e for e in await bench.kube.events(OPERATOR_POD.namespace) if e["reason"] == "CAPublishFailed"]
    return events or None


async def test_a_failed_ca_write_is_retried_counted_and_posted_once_on_the_operators_pod(
    cluster: Bench, helm_bin: Path, tmp_path: Path
) -> None:
    ca = chart_certificate(helm_bin)["ca.crt"]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca)
    namespace = NAMESPACES[0]
    failures = 3
    # A proxy in front of the API server answers the first creates with an HTML page.
    cluster.cluster.garbled["POST", f"/namespaces/{namespace}/configmaps"] = failures
    await cluster.start_operator(ca_config_map=CONFIG_MAP, ca_file=ca_file)

    published = await cluster.eventually(lambda: _published(cluster, namespace), within=60, what="the CA ConfigMap")
    assert published == certificates(ca.decode())
    events = await cluster.eventually(lambda: _failure_events(cluster), what="the CAPublishFailed Event")
    assert len(events) == 1, events  # one per run of failures, not one per retry
    event = events[0]
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod" and event["involvedObject"]["name"] == OPERATOR_POD.name
    assert f"{namespace}/{CONFIG_MAP} not written" in event["message"]
    metrics = await cluster.metrics()
    assert f'llmroute_ca_publish_failures_total{{reason="error"}} {float(failures)}' in metrics
    # The other watched namespace was written on the first try.
    assert await _published(cluster, NAMESPACES[1]) == certificates(ca.decode())
