"""The facts a performance figure is meaningless without: cores, CPU model, kernel, tool and library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("llmroute", "httpx", "httpcore", "httptools", "uvloop", "prometheus_client")


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def cpu_model() -> str:
    """The `model name` of /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> list[tuple[str, str]]:
    """(what, value) pairs describing this machine and the software measured."""
    facts = [
        ("cores (nproc)", str(os.cpu_count())),
        ("CPU", cpu_model()),
        ("kernel", platform.release()),
        ("Python", platform.python_version()),
        ("wrk", _first_line(["wrk", "--version"]).split(" [")[0]),
        ("nginx", _first_line(["nginx", "-v"]).removeprefix("nginx version: ")),
    ]
    return facts + [(name, _version(name)) for name in LIBRARIES]


def load_average() -> str:
    """The 1-minute load average (/proc/loadavg): how busy the machine was besides the bench."""
    return Path("/proc/loadavg").read_text().split()[0]


def git_commit() -> str:
    """The checked-out commit of this repository, marked when tracked files have uncommitted changes."""
    root = Path(__file__).resolve().parents[2]
    head = _first_line(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"])
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head} (with uncommitted changes)" if dirty else head
