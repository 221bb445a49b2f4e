"""The `llmroute` command as a user runs it: the installed console script, a real subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).parents[1] / "examples"
LLMROUTE = shutil.which("llmroute", path=str(Path(sys.executable).parent)) or "llmroute"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLMROUTE, *args], capture_output=True, text=True, timeout=60)


def test_validate_accepts_the_example() -> None:
    result = run("validate", str(EXAMPLES / "support-chat.yaml"))
    assert result.returncode == 0, result.stderr
    assert "shop/support-chat: ok" in result.stdout


def test_validate_prints_every_problem_and_fails(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "support-chat.yaml").read_text())
    doc["spec"]["fallback"] = ["nope"]
    doc["spec"]["priorities"]["normal"]["timeout"] = "soon"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = run("validate", str(bad))
    assert result.returncode == 1
    assert "spec.fallback[0]: unknown backend 'nope'" in result.stderr
    assert "spec.priorities.normal.timeout" in result.stderr


def test_crd_is_valid_yaml_for_llmroutes() -> None:
    result = run("crd")
    assert result.returncode == 0
    crd = yaml.safe_load(result.stdout)
    assert crd["metadata"]["name"] == "llmroutes.llmroute.io"
    assert crd["spec"]["names"]["shortNames"] == ["llmr"]


def test_sidecar_refuses_a_read_timeout_that_would_408_every_split_request() -> None:
    done = run("sidecar", "--routes", "examples/", "--read-timeout", "0")
    assert done.returncode == 2
    assert "--read-timeout: must be more than 0 seconds, got '0'" in done.stderr
