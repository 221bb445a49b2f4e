"""LiteLLM's proxy as a peer: installed by the bench into its own virtualenv, run with one worker,
telemetry, database and UI off."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.common import procs

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-bench-litellm"
PACKAGE = "litellm[proxy]==1.81.13"
"""Pinned: the newest release whose dependencies this machine's PyPI mirror can satisfy (1.106 and later
need certifi>=2026.10.19); releases pulled from PyPI after the 2026 supply-chain incidents are avoided."""
ENV = {
    "LITELLM_TELEMETRY": "False",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the price table at start
    "LITELLM_LOG": "ERROR",
    "DISABLE_ADMIN_UI": "True",
}


def ensure() -> Path:
    """The `litellm` executable of the bench's LiteLLM virtualenv, creating and filling it if missing."""
    exe = VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"installing {PACKAGE} into {VENV} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", PACKAGE], check=True)
    return exe


def version() -> str:
    """The installed LiteLLM version."""
    done = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=VENV,  # not the repository root, whose operator/ would shadow the stdlib's
    )
    return done.stdout.strip()


LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "WARNING"},
        "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}
"""uvicorn without its access log line per request (as one would run it under load)."""


def config(model_list: list[dict[str, Any]], router_settings: dict[str, Any]) -> dict[str, Any]:
    """A proxy config: the given deployments and router settings, no callbacks, no spend logs, no UI."""
    return {
        "model_list": model_list,
        "router_settings": router_settings,
        "litellm_settings": {"telemetry": False, "set_verbose": False, "json_logs": False},
        "general_settings": {"disable_spend_logs": True, "disable_reset_budget": True},
    }


def start(
    name: str, doc: dict[str, Any], workdir: Path, *, cpus: str | None = None, timeout: float = 90.0
) -> tuple[procs.Process, int]:
    """Write `doc` to `workdir/name.yaml` and run the proxy on a free port with one worker; wait until it
    answers its liveness probe."""
    exe = ensure()
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    log_config = workdir / f"{name}-logging.json"
    log_config.write_text(json.dumps(LOG_CONFIG))
    port = procs.free_port()
    argv = [str(exe), "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    argv += ["--log_config", str(log_config)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "OPENAI_", "LITELLM_"))}
    process = procs.start(name, procs.pinned(argv, cpus), workdir, env={**env, **ENV}, cwd=workdir)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/liveliness", timeout=2):
                return process, port
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                process.stop()
                raise TimeoutError(f"{name} did not come up within {timeout:g}s") from None
            process.check()
            time.sleep(0.2)
