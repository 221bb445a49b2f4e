"""The three arms over the same faulty providers: `llmroute sidecar` and LiteLLM's proxy each with one route
(model group) per fault and inbound API, primary plus healthy fallback; and the API's own SDK calling each
primary directly. How each API's backends are declared is one table, `BACKENDS`."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import litellm, procs, sidecar
from bench.faults.catalogue import TIMEOUT_S, Fault

ARMS = ("llmroute", "litellm", "direct")
NAMES = {"llmroute": "llmroute sidecar", "litellm": "LiteLLM proxy", "direct": "SDK, direct"}
LLMROUTE_PROCESS = "sidecar"
"""The llmroute arm's process name (its log, with the access log, is `sidecar.log` in the run's directory)."""
RETRIES = 2
"""Retries after the first attempt: the SDKs' default, LiteLLM's `num_retries`, the route's `attempts`."""


@dataclass(frozen=True)
class Backends:
    """How the providers of one inbound API are declared: to llmroute (provider, the APIs it serves natively)
    and to LiteLLM (its provider prefix), the model names, and the app's SDK on the direct arm."""

    provider: str
    apis: tuple[str, ...]
    litellm: str
    primary: str
    fallback: str
    sdk: str


BACKENDS = {
    "chat": Backends("openai", ("chat",), "openai", "gpt-primary", "gpt-fallback", "openai SDK"),
    "messages": Backends("anthropic", ("messages",), "anthropic", "claude-primary", "claude-fallback", "anthropic SDK"),
    "responses": Backends("openai", ("chat", "responses"), "openai", "gpt-primary", "gpt-fallback", "openai SDK"),
}
"""Per inbound API: OpenAI-compatible chat providers; Anthropic's API; providers that serve Responses as well
as chat (OpenAI's API and vLLM do), so llmroute calls them in the Responses API itself."""


def route_name(api: str, fault: Fault) -> str:
    """The model the app asks a proxy for: one route (model group) per inbound API and fault."""
    return f"{api}-{fault.key}"


def _base(api: str, root: str) -> str:
    """A provider's base URL as llmroute and LiteLLM take it: Anthropic's without `/v1` for LiteLLM, which
    adds `/v1/messages`; every other with `/v1`."""
    return root if BACKENDS[api].provider == "anthropic" else f"{root}/v1"


def route(api: str, fault: Fault, primary: str, fallback: str) -> dict[str, Any]:
    """The LLMRoute for one fault: the faulty primary first (`ordered`), the healthy fallback after it."""
    kind = BACKENDS[api]

    def backend(name: str, root: str, model: str) -> dict[str, Any]:
        """A fresh dict per backend: YAML would write a shared `apis` list as an anchor and an alias."""
        return {"name": name, "provider": kind.provider, "apis": list(kind.apis), "url": f"{root}/v1", "model": model}

    backup = backend("fallback", fallback, kind.fallback)
    if fault.declares_prefill:
        backup["capabilities"] = ["prefill"]
    name = route_name(api, fault)
    return {
        "apiVersion": "llmroute.io/v1alpha1",
        "kind": "LLMRoute",
        "metadata": {"name": name, "namespace": "faults"},
        "spec": {
            "models": [name],
            "strategy": "ordered",
            "backends": [backend("primary", primary, kind.primary), backup],
            "fallback": ["fallback"],
            "priorities": {"normal": {"timeout": f"{TIMEOUT_S:g}s"}},
            "retry": {"attempts": RETRIES, "retryOn": ["connect-failure", "reset", "5xx", "429", "timeout"]},
            "outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "5s"},
        },
    }


Roots = Mapping[tuple[str, str], tuple[str, str]]
"""(api, fault key) -> the roots (scheme, host, port) of its primary and fallback providers."""


def litellm_config(faults: Sequence[Fault], roots: Roots) -> dict[str, Any]:
    """LiteLLM's proxy: per API and fault a model group on the primary and one on the fallback, named as its
    `fallbacks` (and `context_window_fallbacks`) to go to, `num_retries` 2, the same timeout."""
    model_list = []
    fallbacks = []
    for fault in faults:
        for api in fault.apis:
            if (api, fault.key) not in roots:
                continue
            kind, name = BACKENDS[api], route_name(api, fault)
            primary, fallback = roots[api, fault.key]
            for group, root, model in ((name, primary, kind.primary), (f"{name}-fallback", fallback, kind.fallback)):
                params = {"model": f"{kind.litellm}/{model}", "api_base": _base(api, root), "api_key": "sk-bench"}
                model_list.append({"model_name": group, "litellm_params": params})
            fallbacks.append({name: [f"{name}-fallback"]})
    settings = {
        "num_retries": RETRIES,
        "timeout": TIMEOUT_S,
        "fallbacks": fallbacks,
        "context_window_fallbacks": copy.deepcopy(fallbacks),  # not a YAML alias of `fallbacks` in the docs
    }
    return litellm.config(model_list, settings)


def start_proxies(
    arms: Sequence[str], faults: Sequence[Fault], roots: Roots, workdir: Path
) -> tuple[dict[str, str], list[procs.Process], dict[str, str]]:
    """Start the proxies the chosen arms need; their roots by arm, their processes, and for the docs the part
    of their configs that serves the first fault (every other fault's is the same but for names and URLs)."""
    bases: dict[str, str] = {}
    running: list[procs.Process] = []
    configs: dict[str, str] = {}

    def routes(chosen: Sequence[Fault]) -> list[dict[str, Any]]:
        return [route(api, f, *roots[api, f.key]) for f in chosen for api in f.apis if (api, f.key) in roots]

    try:
        if "llmroute" in arms:
            configs["llmroute"] = yaml.safe_dump_all(routes(faults[:1]), sort_keys=False)
            (workdir / "routes.yaml").write_text(yaml.safe_dump_all(routes(faults), sort_keys=False))
            car = sidecar.start(LLMROUTE_PROCESS, workdir / "routes.yaml", workdir)
            running.append(car.process)
            bases["llmroute"] = car.base_url.removesuffix("/v1")
        if "litellm" in arms:
            configs["litellm"] = yaml.safe_dump(litellm_config(faults[:1], roots), sort_keys=False)
            process, port = litellm.start("litellm", litellm_config(faults, roots), workdir)
            running.append(process)
            bases["litellm"] = f"http://127.0.0.1:{port}"
    except BaseException:
        for process in running:
            process.stop()
        raise
    return bases, running, configs
