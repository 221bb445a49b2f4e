"""Compiling routes into a table: conflicts, keys, deterministic versions."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmroute.model import RouteInvalid, SecretValue, compile_table, parse_document
from llmroute.model.files import LocalKeys, compile_files, load_routes

EXAMPLE = Path(__file__).parents[2] / "examples" / "support-chat.yaml"


def doc(name: str = "support-chat", models: list[str] | None = None, keys: bool = True) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    raw = copy.deepcopy(raw)
    raw["metadata"]["name"] = name
    if models is not None:
        raw["spec"]["models"] = models
    if not keys:
        for backend in raw["spec"]["backends"]:
            backend.pop("apiKeySecretRef")
    return raw


def write_secret(root: Path, name: str, key: str, value: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / key).write_text(value + "\n")


def test_version_is_deterministic_and_changes_with_content() -> None:
    a = compile_table([parse_document(doc())]).table
    b = compile_table([parse_document(doc())]).table
    c = compile_table([parse_document(doc(models=["chat", "chat-2"]))]).table
    assert a.version == b.version
    assert a.version != c.version


def test_model_conflict_rejects_the_later_route_only() -> None:
    first, second = parse_document(doc("a")), parse_document(doc("b"))
    result = compile_table([first, second])
    assert [r.name for r in result.table.routes] == ["a"]
    assert "model 'chat' is already served by LLMRoute shop/a" in str(result.rejected["shop/b"][0])
    assert result.table.by_model["chat"].name == "a"


def test_keys_from_mounted_secrets_change_the_version_not_the_output(tmp_path: Path) -> None:
    for key in ("openai", "anthropic", "deepseek"):
        write_secret(tmp_path, "llm-keys", key, f"sk-{key}-1")
    route = parse_document(doc())
    first = compile_table([route], LocalKeys(tmp_path)).table
    assert first.routes[0].backend("gpt41").api_key == SecretValue("sk-openai-1")
    write_secret(tmp_path, "llm-keys", "openai", "sk-openai-2")
    second = compile_table([route], LocalKeys(tmp_path)).table
    assert second.version != first.version
    assert "sk-openai" not in repr(second) and "sk-openai" not in str(second.routes[0].backends[0])


def test_missing_key_is_reported_with_field_and_path(tmp_path: Path) -> None:
    write_secret(tmp_path, "llm-keys", "openai", "x")
    result = compile_table([parse_document(doc())], LocalKeys(tmp_path))
    assert not result.table.routes
    messages = [str(p) for p in result.rejected["shop/support-chat"]]
    assert any(
        m.startswith("spec.backends[1].apiKeySecretRef: Secret 'llm-keys' has no key 'anthropic'") for m in messages
    )


def test_api_key_env(tmp_path: Path) -> None:
    raw = doc()
    for backend in raw["spec"]["backends"]:
        backend.pop("apiKeySecretRef")
        backend["apiKeyEnv"] = "LLM_KEY"
    route = parse_document(raw)
    table = compile_table([route], LocalKeys(None, {"LLM_KEY": "sk-env"})).table
    assert table.routes[0].backends[0].api_key == SecretValue("sk-env")
    with pytest.raises(RouteInvalid, match="environment variable LLM_KEY is not set"):
        from llmroute.model import resolve_keys

        resolve_keys(route, LocalKeys(None, {}))


def test_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(doc("a", ["m1"], keys=False)))
    (tmp_path / "b.yml").write_text(yaml.safe_dump_all([doc("b", ["m2"], keys=False), {"kind": "ConfigMap"}]))
    (tmp_path / "broken.yaml").write_text("spec: [unclosed")
    (tmp_path / "notes.txt").write_text("ignored")
    loaded = load_routes([tmp_path])
    assert sorted(r.name for r in loaded.routes) == ["a", "b"]
    assert list(loaded.problems) == [str(tmp_path / "broken.yaml")]
    assert "not valid YAML" in str(loaded.problems[str(tmp_path / "broken.yaml")][0])
    result, problems = compile_files([tmp_path / "a.yaml", tmp_path / "b.yml"], LocalKeys(None, {}))
    assert result.table.models == ["m1", "m2"]
    assert problems == {}
