"""Bring up one policy's world: fresh simulated providers following the script from a shared epoch, and
the proxy under test (llmroute sidecar with the route's strategy, or LiteLLM) pointed at them."""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from bench.common import litellm, procs, sidecar
from bench.incident import policies
from bench.incident.drawn import Draw
from bench.incident.scenario import PROVIDERS, oracle_choice

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("latency", "score", "cost", "ordered", "weighted")
POLICIES = ("round-robin", "primary-timeout", "litellm", *(f"llmroute-{s}" for s in STRATEGIES), "oracle")
MODEL = "chat"
START_LEAD_S = 1.0
"""The script starts this long after the simulated providers are launched."""


def route(strategy: str, urls: dict[str, str]) -> dict[str, Any]:
    """The LLMRoute every llmroute arm uses; only `strategy` differs between them."""
    return {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": "support-chat", "namespace": "incident"},
        "spec": {
            "models": [MODEL],
            "strategy": strategy,
            "backends": [
                {
                    "name": p.name,
                    "provider": "openai",
                    "url": urls[p.name],
                    "model": p.model,
                    "price": {"inputPerMTok": p.price_in, "outputPerMTok": p.price_out},
                    "quality": p.quality,
                    "weight": p.weight,
                }
                for p in PROVIDERS
            ],
            "fallback": ["mid", "cheap"],
            "priorities": {
                "critical": {"timeout": "1500ms", "hedge": True},
                "normal": {"timeout": "3s"},
                "batch": {"timeout": "20s"},
            },
            "retry": {
                "attempts": 2,
                "budgetPercent": 20,
                "retryOn": ["connect-failure", "reset", "5xx", "429", "timeout"],
            },
            "outlierDetection": {"consecutiveFailures": 5, "baseEjectionTime": "5s", "maxEjectionPercent": 50},
        },
    }


def litellm_config(urls: dict[str, str]) -> dict[str, Any]:
    """LiteLLM's proxy over the same providers: one model group, latency-based routing, retries like the
    llmroute route's (2), the app's timeout."""
    model_list = [
        {
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{p.model}", "api_base": urls[p.name], "api_key": "sk-sim"},
            "model_info": {"id": p.name},
        }
        for p in PROVIDERS
    ]
    settings = {
        "routing_strategy": "latency-based-routing",
        "num_retries": 2,
        "timeout": policies.APP_TIMEOUT_S,
        "allowed_fails": 3,
        "cooldown_time": 5,
    }
    return litellm.config(model_list, settings)


@dataclass
class World:
    """The running processes of one policy's run and the router the app uses."""

    router: policies.Router
    epoch: float
    processes: list[procs.Process] = field(default_factory=list)
    sim_urls: dict[str, str] = field(default_factory=dict)
    config: str = ""
    """The proxy's configuration, as written (route YAML or LiteLLM YAML)."""

    def sim_stats(self) -> dict[str, dict[str, Any]]:
        """GET /sim/stats of each provider: what reached it and what it did."""
        stats = {}
        for name, url in self.sim_urls.items():
            with urllib.request.urlopen(url.removesuffix("/v1") + "/sim/stats", timeout=5) as response:
                stats[name] = json.loads(response.read())
        return stats

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def start(
    policy: str, workdir: Path, duration: float, seed: int, drawn: Path | None = None, epoch: float | None = None
) -> World:
    """Start the proxy (if any), then the providers with the script (or the incident drawn in `drawn`, whose
    oracle the policy `oracle` then follows) starting at `epoch` (time.time()), by default START_LEAD_S from
    now."""
    ports = {p.name: procs.free_port() for p in PROVIDERS}
    urls = {name: f"http://127.0.0.1:{port}/v1" for name, port in ports.items()}
    processes: list[procs.Process] = []
    try:
        config = ""
        if policy.startswith("llmroute-"):
            doc = route(policy.removeprefix("llmroute-"), urls)
            config = yaml.safe_dump(doc, sort_keys=False)
            (workdir / f"{policy}.yaml").write_text(config)
            running = sidecar.start(policy, workdir / f"{policy}.yaml", workdir)
            processes.append(running.process)
            router: policies.Router = policies.Proxy(policy, running.base_url, MODEL)
        elif policy == "litellm":
            doc = litellm_config(urls)
            config = yaml.safe_dump(doc, sort_keys=False)
            process, port = litellm.start("litellm", doc, workdir)
            processes.append(process)
            router = policies.Proxy("litellm (latency-based-routing)", f"http://127.0.0.1:{port}/v1", MODEL)
        elif policy == "round-robin":
            router = policies.RoundRobin(urls)
        elif policy == "primary-timeout":
            router = policies.PrimaryWithTimeout(urls)
        elif policy == "oracle":
            choice = Draw.load(drawn).oracle_choice if drawn is not None else partial(oracle_choice, duration)
            router = policies.Oracle(urls, choice)
        else:
            raise ValueError(f"unknown policy {policy!r}")
        epoch = time.time() + START_LEAD_S if epoch is None else epoch
        argv = [
            sys.executable,
            "-m",
            "bench.incident.sims",
            *([f"--draw={drawn}"] if drawn is not None else []),
            str(duration),
            repr(epoch),
            str(seed),
            *map(str, ports.values()),
        ]
        sims = procs.start(f"sims-{policy}", argv, workdir, cwd=ROOT)
        processes.append(sims)
        for port in ports.values():
            procs.wait_port(sims, port)
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return World(router, epoch, processes, urls, config)
