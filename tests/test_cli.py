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


def test_crd_prints_both_kinds_or_the_one_asked_for() -> None:
    result = run("crd")
    assert result.returncode == 0
    route, policy = yaml.safe_load_all(result.stdout)
    assert route["metadata"]["name"] == "llmroutes.llmroute.io"
    assert route["spec"]["names"]["shortNames"] == ["llmr"]
    assert policy["metadata"]["name"] == "llmpolicies.llmroute.io"
    assert policy["spec"]["names"]["shortNames"] == ["llmp"]
    only = run("crd", "--kind", "LLMPolicy")
    assert [doc["spec"]["names"]["kind"] for doc in yaml.safe_load_all(only.stdout)] == ["LLMPolicy"]


def test_validate_accepts_policies_and_refuses_a_route_outside_allowed(tmp_path: Path) -> None:
    result = run("validate", str(EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert "shop/shop-limits: ok (LLMPolicy; budgets: 3, rate limits: 1)" in result.stdout
    policy = yaml.safe_load((EXAMPLES / "shop-limits.yaml").read_text())
    policy["spec"]["allowed"]["providers"] = ["openai"]
    policy["spec"]["budgets"][0]["window"] = "1y"
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "route.yaml").write_text((EXAMPLES / "support-chat.yaml").read_text())
    result = run("validate", str(tmp_path))
    assert result.returncode == 1
    assert "policy.yaml: shop/shop-limits: spec.budgets[0].window: invalid window '1y'" in result.stderr
    policy["spec"]["budgets"][0]["window"] = "30d"
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    result = run("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        "shop/support-chat: spec.backends: PolicyViolation: LLMPolicy shop/shop-limits: backend claude:"
        " provider anthropic is not in allowed.providers"
    ) in result.stderr


def test_sidecar_refuses_a_read_timeout_that_would_408_every_split_request() -> None:
    done = run("sidecar", "--routes", "examples/", "--read-timeout", "0")
    assert done.returncode == 2
    assert "--read-timeout: must be more than 0 seconds, got '0'" in done.stderr
