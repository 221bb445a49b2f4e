"""The real kubectl binary against the emulated API server: apply an LLMRoute, the sidecar gets it,
`kubectl get` shows the status the operator wrote."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from conftest import Bench


async def kubectl(bench: Bench, binary: Path, *args: str, stdin: str | None = None) -> str:
    """Run kubectl with the bench's kubeconfig; fail with its stderr."""
    command = [str(binary), f"--kubeconfig={bench.kubeconfig}", *args]
    done = await asyncio.to_thread(subprocess.run, command, input=stdin, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"kubectl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


async def test_kubectl_apply_reaches_the_sidecar_and_get_shows_status(bench: Bench, kubectl_bin: Path) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    manifest = {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": "support", "namespace": "shop"},
        "spec": bench.spec(["chat"]),
    }
    started = time.monotonic()
    # The emulator serves no OpenAPI document, so kubectl cannot validate client-side.
    out = await kubectl(bench, kubectl_bin, "apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(manifest))
    assert "llmroute.llmroute.io/support created" in out

    async def served() -> bool:
        return "support" in sidecar.table()

    await bench.eventually(served, what="the applied route at the sidecar")
    print(f"\npropagation kubectl apply -> sidecar table: {(time.monotonic() - started) * 1000:.0f} ms")

    async def programmed() -> dict[str, object] | None:
        listing = json.loads(await kubectl(bench, kubectl_bin, "get", "llmroutes", "-n", "shop", "-o", "json"))
        route = listing["items"][0] if listing["items"] else None
        return route if bench.condition(route, "Programmed").get("status") == "True" else None

    route = await bench.eventually(programmed, within=10, what="Programmed=True through kubectl get")
    assert route["status"]["sidecars"]["programmed"] == 1
    names = await kubectl(bench, kubectl_bin, "get", "llmr", "-n", "shop", "-o", "name")
    assert names.split() == ["llmroute.llmroute.io/support"]
