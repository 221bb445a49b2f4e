"""Fixtures for the chart tests: the real helm binary and a renderer of the chart."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import REPO, helm_bin, kubectl_bin

__all__ = ["CHART", "Render", "helm_bin", "kubectl_bin", "render"]

CHART = REPO / "charts" / "llmroute"
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(helm_bin: Path) -> Render:
    """`helm template` the chart with `{"dotted.key": value}` overrides; returns the rendered objects."""

    def _render(values: dict[str, Any] | None = None, namespace: str = "llmroute-system") -> list[dict[str, Any]]:
        args = [str(helm_bin), "template", "llmroute", str(CHART), "--namespace", namespace]
        for key, value in (values or {}).items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]

    return _render
