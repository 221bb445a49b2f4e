"""One ControlPlane replica, driven through publish() as the operator does, on commands from run.py.

Prints {"port"} and {"baseline_rss"} at start, then answers JSON-line commands on stdin:
{"publish": generation} -> {"published", "at", "version"} at once, then {"converged", "convergence_s"} (this
replica's own llmroute_config_convergence_seconds observation, None after 30 s); {"status"} ->
{"connected", "programmed", "rss", "at"}; {"stop"} ends it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from llmroute.model import Route, SecretValue, parse_document, table_version
from llmroute.operator.auth import InsecureAuthenticator
from llmroute.operator.controlplane import ControlPlane

NAMESPACE, ROUTE = "bench", "support-chat"


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def backend(name: str, provider: str, url: str, model: str, *, secret: str = "", env: str = "") -> dict[str, object]:
    spec: dict[str, object] = {"name": name, "provider": provider, "url": url, "model": model}
    spec["price"] = {"inputPerMTok": 8, "outputPerMTok": 8}
    if secret:
        spec["apiKeySecretRef"] = {"name": "llm-keys", "key": secret}
    if env:
        spec["apiKeyEnv"] = env
    return spec


def route(generation: int) -> Route:
    """A realistic route: three backends, fallback, priorities; each change moves one backend's URL."""
    doc = {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": ROUTE, "namespace": NAMESPACE, "generation": generation},
        "spec": {
            "models": ["chat"],
            "workloadSelector": {"matchLabels": {"app": "bench"}},
            "backends": [
                backend("gpt41", "openai", f"https://gw-{generation}.example/v1", "gpt-4.1", secret="openai"),
                backend("claude", "anthropic", "https://api.anthropic.com", "claude-sonnet-4", secret="anthropic"),
                backend("deepseek", "openai", "https://api.deepseek.com/v1", "deepseek-chat", env="DEEPSEEK_API_KEY"),
            ],
            "fallback": ["deepseek"],
            "priorities": {"critical": {"timeout": "500ms", "hedge": True}, "batch": {"timeout": "30s"}},
        },
    }
    parsed = parse_document(doc)
    keys = {"gpt41": SecretValue("sk-bench-openai"), "claude": SecretValue("sk-bench-anthropic")}
    return replace(parsed, backends=tuple(replace(b, api_key=keys.get(b.name)) for b in parsed.backends))


class Replica:
    """The control plane and its convergence metric."""

    def __init__(self, debounce: float) -> None:
        self.registry = CollectorRegistry()
        self.plane = ControlPlane(authenticator=InsecureAuthenticator(), registry=self.registry, debounce=debounce)
        self.changed = asyncio.Event()
        self.plane.on_change = lambda namespace: self.changed.set()

    def observed(self) -> tuple[float, float]:
        count = self.registry.get_sample_value("llmroute_config_convergence_seconds_count") or 0.0
        total = self.registry.get_sample_value("llmroute_config_convergence_seconds_sum") or 0.0
        return count, total

    async def publish(self, generation: int) -> None:
        before_count, before_sum = self.observed()
        self.plane.publish(NAMESPACE, [route(generation)])
        emit(published=generation, at=time.time(), version=table_version([route(generation)]))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while self.observed()[0] <= before_count:
                    await self.changed.wait()
                    self.changed.clear()
        count, total = self.observed()
        emit(converged=generation, convergence_s=(total - before_sum) if count > before_count else None)

    def status(self) -> None:
        counts = self.plane.route_sidecars(NAMESPACE, ROUTE)
        emit(connected=counts.connected, programmed=counts.programmed, rss=rss_bytes(), at=time.time())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--debounce", type=float, default=0.1)
    args = parser.parse_args()
    replica = Replica(args.debounce)
    await replica.plane.start("127.0.0.1:0")
    replica.plane.publish(NAMESPACE, [route(1)])
    emit(port=replica.plane.port)
    await asyncio.sleep(0.5)
    emit(baseline_rss=rss_bytes())
    loop = asyncio.get_running_loop()
    publishing: set[asyncio.Task[None]] = set()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if "publish" in command:
            task = asyncio.create_task(replica.publish(int(command["publish"])))
            publishing.add(task)
            task.add_done_callback(publishing.discard)
        elif "status" in command:
            replica.status()
        elif "stop" in command:
            break
    await replica.plane.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
