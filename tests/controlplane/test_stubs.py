"""The checked-in protobuf modules are exactly what the .proto files generate."""

from __future__ import annotations

from pathlib import Path

import llmroute.v1
from llmroute.v1.generate import PROTO_ROOT, generate


def test_checked_in_stubs_match_the_protos(tmp_path: Path) -> None:
    package = Path(llmroute.v1.__file__).parent
    generated = generate(PROTO_ROOT, tmp_path)
    assert {p.name for p in generated} == {"routes_pb2.py", "routes_pb2.pyi", "load_pb2.py", "load_pb2.pyi"}
    stale = [
        p.name for p in generated if not (package / p.name).exists() or (package / p.name).read_text() != p.read_text()
    ]
    assert not stale, f"{stale} differ from protos/llmroute/v1: run `python -m llmroute.v1.generate`"
