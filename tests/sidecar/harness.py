"""A real sidecar (in this process, real sockets) in front of real simulated providers, for the tests."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anthropic
import httpx
import openai
import yaml

from llmroute.sidecar.main import Sidecar, add_arguments
from llmroute.sim import Behavior, SimProvider

LLMROUTE = str(Path(sys.executable).parent / "llmroute")
APP_KEY = "sk-ant-app-own-key-0123"
"""The key an app's Anthropic SDK sends: routed models must never forward it upstream."""


@dataclass
class Harness:
    """Simulated backends, the route file that names them, and the sidecar serving it."""

    sims: dict[str, SimProvider]
    route_file: Path
    sidecar: Sidecar
    spec: dict[str, Any] = field(default_factory=dict)
    clients: list[openai.AsyncOpenAI | anthropic.AsyncAnthropic] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.app_server.port}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar.admin_server.port}"

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the sidecar, with its own retries off so ours are what is tested."""
        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key="app-key-unused", **kwargs)
        self.clients.append(client)
        return client

    def anthropic(self, **kwargs: Any) -> anthropic.AsyncAnthropic:
        """The official Anthropic SDK pointed at the sidecar (it appends /v1/messages to the bare origin), with
        the app's own key `APP_KEY` unless given another, and its retries off."""
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", APP_KEY)
        client = anthropic.AsyncAnthropic(base_url=self.base_url.removesuffix("/v1"), **kwargs)
        self.clients.append(client)
        return client

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=30)

    def write_spec(self, spec: dict[str, Any]) -> None:
        """Replace the route file's spec (the sidecar picks it up on its next poll or `reload`)."""
        self.spec = spec
        self.route_file.write_text(yaml.safe_dump(route_doc(spec)))


def route_doc(spec: dict[str, Any], name: str = "chat") -> dict[str, Any]:
    return {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


def backend_entry(name: str, sim: SimProvider, **extra: Any) -> dict[str, Any]:
    return {"name": name, "provider": sim.kind, "url": sim.url, "model": f"{name}-model", **extra}


@contextlib.asynccontextmanager
async def sidecar_running(argv: list[str]) -> AsyncIterator[Sidecar]:
    """A started sidecar in this process with these flags, listening on free ports; stopped afterwards."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    sidecar = Sidecar(parser.parse_args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *argv]))
    await sidecar.start()
    try:
        yield sidecar
    finally:
        await sidecar.stop()


@contextlib.asynccontextmanager
async def sidecar_for(tmp_path: Path, spec: dict[str, Any], argv: list[str] | None = None) -> AsyncIterator[Sidecar]:
    """A started sidecar serving a route file with `spec` (model `chat`), on free ports; stopped afterwards."""
    route_file = tmp_path / "route.yaml"
    route_file.write_text(yaml.safe_dump(route_doc(spec)))
    async with sidecar_running(["--routes", str(route_file), "--drain-timeout", "2", *(argv or [])]) as sidecar:
        yield sidecar


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    backends: dict[str, Behavior | tuple[str, Behavior]],
    *,
    spec: dict[str, Any] | None = None,
    backend_extra: dict[str, dict[str, Any]] | None = None,
    argv: list[str] | None = None,
) -> AsyncIterator[Harness]:
    """Start one SimProvider per backend (`Behavior` or `(kind, Behavior)`) and a sidecar routing model
    `chat` over them, in the order given; `spec` entries override the route's defaults."""
    sims: dict[str, SimProvider] = {}
    for name, value in backends.items():
        kind, behavior = value if isinstance(value, tuple) else ("openai", value)
        sims[name] = SimProvider(name, kind, behavior, seed=1)  # type: ignore[arg-type]
        await sims[name].start()
    extra = backend_extra or {}
    full_spec: dict[str, Any] = {
        "models": ["chat"],
        "backends": [backend_entry(n, s, **extra.get(n, {})) for n, s in sims.items()],
        **(spec or {}),
    }
    try:
        async with sidecar_for(tmp_path, full_spec, argv) as sidecar:
            harness = Harness(sims, tmp_path / "route.yaml", sidecar, full_spec)
            try:
                yield harness
            finally:
                for client in harness.clients:
                    await client.close()
    finally:
        for sim in sims.values():
            await sim.stop()


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hello"}], **extra}


def spawn(
    argv: list[str], stdout: int | IO[bytes] | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """A child process with its log on a pipe (unbuffered, so lines arrive as they are written), with `env`
    added to this process's environment."""
    environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE, text=True, env=environment)


@contextlib.asynccontextmanager
async def sidecar_process(
    *args: str, stdout: int | IO[bytes] | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[subprocess.Popen[str], int, int, str]]:
    """`llmroute sidecar ARGS` as a real process (`env` added to its environment), its log on a pipe
    (unbuffered) and its stdout (the access log) where `stdout` says (default: inherited); yields it, its app
    and admin ports (read from its log) and the log lines up to there. Killed afterwards if still running."""
    argv = [LLMROUTE, "sidecar", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", *args]
    process = spawn(argv, stdout, env)
    assert process.stderr is not None
    line = startup = ""
    for _ in range(200):
        line = await asyncio.to_thread(process.stderr.readline)
        startup += line
        if "listening on" in line or not line:
            break
    match = re.search(r"listening on 127\.0\.0\.1:(\d+) \(admin 127\.0\.0\.1:(\d+)\)", line)
    assert match, f"sidecar did not start: {startup!r}"
    try:
        yield process, int(match.group(1)), int(match.group(2)), startup
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
