"""The real-cluster suite runs only when KUBECONFIG points at a reachable cluster (kind, k3d)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.tools import helm_bin, kubectl_bin

__all__ = ["cluster", "helm_bin", "kubectl_bin"]


def _unreachable(request: pytest.FixtureRequest) -> str | None:
    """Why the suite cannot run, or None when a cluster answers (kubectl is installed only then)."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set: the e2e suite needs a cluster (e.g. `kind create cluster`)"
    kubectl: Path = request.getfixturevalue("kubectl_bin")
    result = subprocess.run([str(kubectl), "version", "--request-timeout=5s"], capture_output=True, text=True)
    if result.returncode != 0:
        return f"the cluster in KUBECONFIG={kubeconfig} is not reachable: {result.stderr.strip()[:300]}"
    return None


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> str:
    """The KUBECONFIG of a reachable cluster; skips the suite (with the reason printed) otherwise."""
    reason = _unreachable(request)
    if reason:
        print(f"\ne2e skipped: {reason}")
        pytest.skip(reason)
    return os.environ["KUBECONFIG"]
