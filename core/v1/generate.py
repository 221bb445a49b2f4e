"""Regenerate the protobuf modules of this package from protos/llmroute/v1/*.proto with grpcio-tools.

Run `python -m llmroute.v1.generate` from a checkout; a test regenerates into a temporary directory
and fails when the checked-in modules differ. Service bindings are not generated: llmroute.v1.rpc
builds typed ones from the descriptors, so mypy --strict covers the callers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

PACKAGE = Path(__file__).resolve().parent
PROTO_ROOT = PACKAGE.parents[1] / "protos"
PROTO_PACKAGE = Path("llmroute/v1")


def header(proto: Path, suffix: str) -> str:
    """The lines that mark a module as generated, and from what (protoc's .pyi leaves Mapping bare)."""
    text = f"# Generated from protos/{PROTO_PACKAGE / proto.name} by `python -m llmroute.v1.generate`; do not edit.\n"
    if suffix == ".pyi":
        text += '# mypy: disable-error-code="type-arg"\n'
    return text


def generate(proto_root: Path, out: Path) -> list[Path]:
    """Compile every .proto of llmroute/v1 under proto_root into out (`*_pb2.py` and `*_pb2.pyi`)."""
    protos = sorted((proto_root / PROTO_PACKAGE).glob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files in {proto_root / PROTO_PACKAGE}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            *(str(p.relative_to(proto_root)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out.mkdir(parents=True, exist_ok=True)
        for proto in protos:
            for suffix in (".py", ".pyi"):
                name = f"{proto.stem}_pb2{suffix}"
                text = (Path(tmp) / PROTO_PACKAGE / name).read_text()
                (out / name).write_text(header(proto, suffix) + text)
                written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmroute.v1.generate", description=__doc__)
    parser.add_argument("--protos", type=Path, default=PROTO_ROOT, help="directory holding llmroute/v1/*.proto")
    parser.add_argument("--out", type=Path, default=PACKAGE, help="where the modules go (default: this package)")
    args = parser.parse_args(argv)
    for path in generate(args.protos, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
