"""The three arms over the same faulty providers: `llmroute sidecar` and LiteLLM's proxy each with one route
(model group) per fault, primary plus healthy fallback; and the openai SDK calling each primary directly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.common import litellm, procs, sidecar
from bench.faults.catalogue import TIMEOUT_S, Fault

ARMS = ("llmroute", "litellm", "openai-sdk")
NAMES = {"llmroute": "llmroute sidecar", "litellm": "LiteLLM proxy", "openai-sdk": "openai SDK, direct"}
PRIMARY_MODEL = "gpt-primary"
FALLBACK_MODEL = "gpt-fallback"
LLMROUTE_PROCESS = "sidecar"
"""The llmroute arm's process name (its log, with the access log, is `sidecar.log` in the run's directory)."""
RETRIES = 2
"""Retries after the first attempt: the SDK's default, LiteLLM's `num_retries`, the route's `attempts`."""


def route(fault: Fault, primary: str, fallback: str) -> dict[str, Any]:
    """The LLMRoute for one fault: the faulty primary first (`ordered`), the healthy fallback after it."""
    backup: dict[str, Any] = {"name": "fallback", "provider": "openai", "url": fallback, "model": FALLBACK_MODEL}
    if fault.declares_prefill:
        backup["capabilities"] = ["prefill"]
    return {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": fault.key, "namespace": "faults"},
        "spec": {
            "models": [fault.key],
            "strategy": "ordered",
            "backends": [{"name": "primary", "provider": "openai", "url": primary, "model": PRIMARY_MODEL}, backup],
            "fallback": ["fallback"],
            "priorities": {"normal": {"timeout": f"{TIMEOUT_S:g}s"}},
            "retry": {"attempts": RETRIES, "retryOn": ["connect-failure", "reset", "5xx", "429", "timeout"]},
            "outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "5s"},
        },
    }


def litellm_config(urls: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """LiteLLM's proxy: per fault a model group on the primary and one on the fallback, named as its
    `fallbacks` (and `context_window_fallbacks`) to go to, `num_retries` 2, the same timeout."""
    model_list = []
    for key, (primary, fallback) in urls.items():
        for name, url, model in ((key, primary, PRIMARY_MODEL), (f"{key}-fallback", fallback, FALLBACK_MODEL)):
            params = {"model": f"openai/{model}", "api_base": url, "api_key": "sk-bench"}
            model_list.append({"model_name": name, "litellm_params": params})
    fallbacks = [{key: [f"{key}-fallback"]} for key in urls]
    settings = {
        "num_retries": RETRIES,
        "timeout": TIMEOUT_S,
        "fallbacks": fallbacks,
        "context_window_fallbacks": fallbacks,
    }
    return litellm.config(model_list, settings)


def start_proxies(
    arms: Sequence[str], faults: Sequence[Fault], urls: Mapping[str, tuple[str, str]], workdir: Path
) -> tuple[dict[str, str], list[procs.Process], dict[str, str]]:
    """Start the proxies the chosen arms need; their base URLs by arm, their processes, their configs."""
    bases: dict[str, str] = {}
    running: list[procs.Process] = []
    configs: dict[str, str] = {}
    try:
        if "llmroute" in arms:
            docs = [route(f, *urls[f.key]) for f in faults]
            configs["llmroute"] = yaml.safe_dump_all(docs, sort_keys=False)
            (workdir / "routes.yaml").write_text(configs["llmroute"])
            car = sidecar.start(LLMROUTE_PROCESS, workdir / "routes.yaml", workdir)
            running.append(car.process)
            bases["llmroute"] = car.base_url
        if "litellm" in arms:
            doc = litellm_config(urls)
            configs["litellm"] = yaml.safe_dump(doc, sort_keys=False)
            process, port = litellm.start("litellm", doc, workdir)
            running.append(process)
            bases["litellm"] = f"http://127.0.0.1:{port}/v1"
    except BaseException:
        for process in running:
            process.stop()
        raise
    return bases, running, configs
