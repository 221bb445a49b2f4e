"""The protobuf modules, checked in and installed, are exactly what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmroute.v1
from llmroute.v1.generate import generate

REPO = Path(__file__).parents[2]


@pytest.mark.parametrize(
    "package", [REPO / "core" / "v1", Path(llmroute.v1.__file__).parent], ids=["checked-in", "installed"]
)
def test_stubs_match_the_protos(tmp_path: Path, package: Path) -> None:
    generated = generate(REPO / "protos", tmp_path)
    assert {p.name for p in generated} == {"routes_pb2.py", "routes_pb2.pyi", "load_pb2.py", "load_pb2.pyi"}
    stale = [
        p.name for p in generated if not (package / p.name).exists() or (package / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"{stale} in {package} differ from protos/llmroute/v1: run `python -m llmroute.v1.generate`"
