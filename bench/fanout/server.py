"""One ControlPlane, driven through publish() as the operator does: waits for N sidecars, then changes a route K times.

Prints JSON lines: {"port"}, {"baseline_rss"}, {"connected", "rss"}, one {"change", "version",
"published_at", "convergence_s"} per change (convergence_s = the control plane's own
llmroute_config_convergence_seconds observation), then {"done"}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry

from llmroute.model import Route, SecretValue, parse_document, table_version
from llmroute.operator.auth import InsecureAuthenticator
from llmroute.operator.controlplane import ControlPlane


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
        "metadata": {"name": "support-chat", "namespace": "bench", "generation": generation},
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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sidecars", type=int, required=True)
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between a convergence and the next change")
    parser.add_argument("--debounce", type=float, default=0.1)
    args = parser.parse_args()
    registry = CollectorRegistry()
    plane = ControlPlane(authenticator=InsecureAuthenticator(), registry=registry, debounce=args.debounce)
    changed = asyncio.Event()
    plane.on_change = lambda namespace: changed.set()

    async def until(condition: Callable[[], bool], within: float) -> None:
        async with asyncio.timeout(within):
            while not condition():
                await changed.wait()
                changed.clear()

    await plane.start("127.0.0.1:0")
    plane.publish("bench", [route(1)])
    emit(port=plane.port)
    await asyncio.sleep(0.5)
    emit(baseline_rss=rss_bytes())
    await until(lambda: plane.route_sidecars("bench", "support-chat").programmed >= args.sidecars, 300)
    await asyncio.sleep(1.0)
    emit(connected=args.sidecars, rss=rss_bytes())

    def observed() -> tuple[float, float]:
        count = registry.get_sample_value("llmroute_config_convergence_seconds_count") or 0.0
        total = registry.get_sample_value("llmroute_config_convergence_seconds_sum") or 0.0
        return count, total

    for change in range(args.changes):
        generation = change + 2
        before_count, before_sum = observed()
        published_at = time.time()
        plane.publish("bench", [route(generation)])
        with contextlib.suppress(TimeoutError):
            await until(lambda: observed()[0] > before_count, 30)  # noqa: B023 (called before the next change)
        count, total = observed()
        emit(
            change=change,
            version=table_version([route(generation)]),
            published_at=published_at,
            convergence_s=(total - before_sum) if count > before_count else None,
        )
        await asyncio.sleep(args.pause)
    emit(done=True)
    await plane.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
