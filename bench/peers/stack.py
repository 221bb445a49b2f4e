"""The processes of the peers bench: the nginx backend and the three proxies in front of it.

nginx cannot see whether a request body asks for a stream, so the backend has two servers: one answers
JSON, one a fixed SSE stream. Each proxy gets both: model `bench` goes to the JSON server, model
`bench-stream` to the SSE server (nginx as a proxy: one port per upstream).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import litellm, nginx, procs, sidecar

ARMS = ("direct", "nginx", "litellm", "sidecar")
MODES = ("json", "stream")
MODEL = {"json": "bench", "stream": "bench-stream"}


def route_documents(ports: dict[str, int]) -> list[dict[str, Any]]:
    """One LLMRoute per mode, each with one `openai` backend on the matching nginx server."""
    return [
        {
            "apiVersion": "llmroute.io/v1alpha1",
            "kind": "LLMRoute",
            "metadata": {"name": MODEL[mode], "namespace": "bench"},
            "spec": {
                "models": [MODEL[mode]],
                "backends": [
                    {
                        "name": f"nginx-{mode}",
                        "provider": "openai",
                        "url": f"http://127.0.0.1:{ports[mode]}/v1",
                        "model": "bench-model",
                    }
                ],
            },
        }
        for mode in MODES
    ]


def litellm_config(ports: dict[str, int]) -> dict[str, Any]:
    """LiteLLM's proxy: one openai-compatible deployment per mode, latency-based routing."""
    model_list = [
        {
            "model_name": MODEL[mode],
            "litellm_params": {
                "model": "openai/bench-model",
                "api_base": f"http://127.0.0.1:{ports[mode]}/v1",
                "api_key": "sk-bench",
            },
        }
        for mode in MODES
    ]
    return litellm.config(model_list, {"routing_strategy": "latency-based-routing"})


@dataclass
class Stack:
    """Everything running: `urls[arm][mode]` is where wrk sends requests, `pids(arm)` what to measure."""

    workdir: Path
    processes: dict[str, procs.Process]
    urls: dict[str, dict[str, str]]
    route_yaml: str
    litellm_yaml: str

    def proxy(self, arm: str) -> procs.Process | None:
        return self.processes.get(arm)

    def pids(self, arm: str) -> list[int]:
        """The proxy's process and its children (nginx's master and worker; LiteLLM's server)."""
        process = self.processes.get(arm)
        return procs.tree(process.pid) if process is not None else []

    def check(self) -> None:
        for process in self.processes.values():
            process.check()

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def start(workdir: Path, arms: tuple[str, ...], *, cpus: dict[str, str | None]) -> Stack:
    """Start the backend and the proxies of `arms`; stop whatever started if one fails."""
    procs.require("wrk", "nginx", "taskset")
    processes: dict[str, procs.Process] = {}
    stack = Stack(workdir, processes, {}, "", "")
    try:
        ports = {mode: procs.free_port() for mode in MODES}
        servers = nginx.chat_backend(ports["json"]) + nginx.stream_backend(ports["stream"])
        processes["backend"] = nginx.start("backend", workdir, servers, cpus=cpus["backend"])
        for port in ports.values():
            procs.wait_port(processes["backend"], port)
        stack.urls["direct"] = {mode: _url(ports[mode]) for mode in MODES}
        if "nginx" in arms:
            front = {mode: procs.free_port() for mode in MODES}
            servers = nginx.reverse_proxy(front["json"], ports["json"]) + nginx.reverse_proxy(
                front["stream"], ports["stream"], buffering=False
            )
            processes["nginx"] = nginx.start("proxy", workdir, servers, cpus=cpus["proxy"])
            for port in front.values():
                procs.wait_port(processes["nginx"], port)
            stack.urls["nginx"] = {mode: _url(front[mode]) for mode in MODES}
        if "litellm" in arms:
            doc = litellm_config(ports)
            stack.litellm_yaml = yaml.safe_dump(doc, sort_keys=False)
            processes["litellm"], port = litellm.start("litellm", doc, workdir, cpus=cpus["proxy"])
            stack.urls["litellm"] = {mode: _url(port) for mode in MODES}
        if "sidecar" in arms:
            routes = workdir / "routes.yaml"
            stack.route_yaml = yaml.safe_dump_all(route_documents(ports), sort_keys=False)
            routes.write_text(stack.route_yaml)
            running = sidecar.start("sidecar", routes, workdir, cpus=cpus["proxy"])
            processes["sidecar"] = running.process
            stack.urls["sidecar"] = {mode: _url(running.port) for mode in MODES}
    except BaseException:
        stack.stop()
        raise
    return stack
