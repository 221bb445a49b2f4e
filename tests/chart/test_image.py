"""The Dockerfile, checked without a container engine: its inputs exist, its entrypoint is ours, it runs non-root."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.tools import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
DOCKERIGNORE = (REPO / ".dockerignore").read_text().split()


def stages() -> list[str]:
    """The Dockerfile's stages, each from its FROM line to the next."""
    return [f"FROM{part}" for part in re.split(r"^FROM", DOCKERFILE, flags=re.MULTILINE)[1:]]


def copied_paths() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    paths = []
    for line in re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE, flags=re.MULTILINE):
        paths += line.split()[:-1]
    return paths


@pytest.mark.parametrize("path", copied_paths())
def test_every_copied_path_exists_and_is_not_dockerignored(path: str) -> None:
    assert (REPO / path).exists(), f"Dockerfile copies {path}, which is not in the repository"
    assert path.rstrip("/") not in DOCKERIGNORE


def test_the_build_context_holds_every_package_directory() -> None:
    copied = {p.rstrip("/") for p in copied_paths()}
    assert {"pyproject.toml", "core", "operator", "sidecar"} <= copied


def test_entrypoint_is_the_installed_console_script() -> None:
    [entrypoint] = re.findall(r'^ENTRYPOINT \["([^"]+)"\]', DOCKERFILE, flags=re.MULTILINE)
    [script] = [e for e in entry_points(group="console_scripts") if e.name == entrypoint]
    assert script.value == "llmroute.cli:main"


@pytest.mark.parametrize("command", ["operator", "sidecar", "sim"])
def test_the_image_commands_run(command: str) -> None:
    """The chart runs `llmroute operator`, the webhook injects `llmroute sidecar`, the sample uses `sim`."""
    script = Path(sys.executable).parent / "llmroute"
    result = subprocess.run([str(script), command, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_final_stage_is_non_root_without_build_tools() -> None:
    *_, final = stages()
    assert re.search(r"^USER 65532:65532$", final, flags=re.MULTILINE)
    assert "COPY --from=build /opt/llmroute /opt/llmroute" in final
    for tool in ("pip install", "apt-get install", "gcc", "build-essential"):
        assert tool not in final


def test_image_user_matches_the_injected_sidecar() -> None:
    from llmroute.operator.injection import InjectionConfig, sidecar_container

    container = sidecar_container(InjectionConfig(image="i", control_plane="cp:15010", operator_namespace="ns"))
    assert container["securityContext"]["runAsUser"] == 65532
    assert Path(REPO / "Dockerfile").read_text().count("65532") >= 2
