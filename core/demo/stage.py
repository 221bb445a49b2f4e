"""The demo's stage: the simulated providers, the shipped route pointed at them, and a sidecar serving it,
all on 127.0.0.1 ephemeral ports with files in a scratch directory."""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from llmroute.demo.scenario import CAST, SECRET_NAME
from llmroute.model.files import LocalKeys, compile_files
from llmroute.sidecar.main import Sidecar, add_arguments
from llmroute.sim import SimProvider


class StageError(RuntimeError):
    """The demo could not set itself up (the route was rejected, the sidecar did not start)."""


def route_templates() -> list[dict[str, Any]]:
    """The LLMRoutes shipped with the package (core/demo/route.yaml): the chat route first, then search."""
    text = resources.files("llmroute.demo").joinpath("route.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def write_route(path: Path, urls: dict[str, str]) -> list[dict[str, Any]]:
    """The templates with each backend's url replaced by `urls[name]`, written to `path`."""
    docs = route_templates()
    for doc in docs:
        for backend in doc["spec"]["backends"]:
            backend["url"] = urls[backend["name"]]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return docs


class Stage:
    """Providers and sidecar; `start` brings everything up, `stop` takes it down (safe after a failed start)."""

    def __init__(self, workdir: Path, seed: int | None) -> None:
        self.workdir = workdir
        self.providers = {
            c.name: SimProvider(c.name, c.kind, c.healthy, seed=None if seed is None else seed + i)
            for i, c in enumerate(CAST)
        }
        self._started: list[SimProvider] = []
        self.sidecar: Sidecar | None = None
        self.route: dict[str, Any] = {}
        """The chat route, whose incident the demo shows."""
        self.search_model = ""
        """The model of the embeddings route."""

    async def start(self) -> None:
        """Providers first (the route needs their ports), then the route and keys, then the sidecar."""
        for provider in self.providers.values():
            await provider.start("127.0.0.1", 0)
            self._started.append(provider)
        secrets = self.workdir / "secrets" / SECRET_NAME
        secrets.mkdir(parents=True)
        for cast in CAST:
            (secrets / cast.secret_key).write_text(cast.healthy.api_key or "")
        route_file = self.workdir / "route.yaml"
        self.route, search = write_route(route_file, {name: p.url for name, p in self.providers.items()})
        self.search_model = search["spec"]["models"][0]
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        secrets_dir = self.workdir / "secrets"
        # The live view owns the terminal: no access-log lines between its frames.
        argv = ["--routes", str(route_file), "--secrets-dir", str(secrets_dir), "--drain-timeout", "5"]
        argv += ["--access-log", "off"]
        args = parser.parse_args([*argv, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        # The same check as `llmroute validate --check-keys`, so a broken template says what is wrong.
        _, problems = compile_files([route_file], LocalKeys(secrets_dir))
        if problems:
            detail = "; ".join(f"{where}: {problem}" for where, items in problems.items() for problem in items)
            raise StageError(f"the demo route is invalid: {detail}")
        self.sidecar = Sidecar(args)
        await self.sidecar.start()
        if not self.sidecar.router.ready:
            raise StageError("the sidecar started without loading the demo route")

    @property
    def route_name(self) -> str:
        return f"{self.route['metadata']['namespace']}/{self.route['metadata']['name']}"

    @property
    def model(self) -> str:
        model: str = self.route["spec"]["models"][0]
        return model

    @property
    def base_url(self) -> str:
        assert self.sidecar is not None
        return f"http://127.0.0.1:{self.sidecar.app_server.port}/v1"

    @property
    def admin_url(self) -> str:
        assert self.sidecar is not None
        return f"http://127.0.0.1:{self.sidecar.admin_server.port}"

    async def stop(self) -> None:
        if self.sidecar is not None:
            await self.sidecar.stop()
        for provider in self._started:
            await provider.stop()
