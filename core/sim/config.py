"""Several simulated backends from one YAML/JSON file, and the `llmroute sim CONFIG` command.

    seed: 7                       # optional: reproducible draws
    backends:
      - name: primary
        kind: openai              # openai | anthropic | azure-openai
        port: 9001                # optional; 0 or absent = any free port
        models: [gpt-4.1]
        behavior: {latency: {median: 300ms, p95: 800ms}, error_rate: 0.01}
      - name: backup
        kind: anthropic
        schedule:                 # each phase changes only what it names
          - {at: 0s, behavior: {latency: 400ms}}
          - {at: 20s, behavior: {latency: 8.5s, error_rate: 0.3}}

Latencies are seconds or durations (`300ms`), or {uniform: [low, high]}, or {median: m, p95: p}.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml

from llmroute.http import run
from llmroute.model.durations import parse_duration
from llmroute.sim.behavior import Behavior, Latency, Schedule
from llmroute.sim.provider import Kind, SimProvider

_SECONDS_FIELDS = frozenset({"token_delay", "json_token_delay", "retry_after", "stall"})
_LATENCY_FIELDS = frozenset({"latency", "ttft"})
_BEHAVIOR_FIELDS = frozenset(f.name for f in dataclasses.fields(Behavior))


class SimConfigError(ValueError):
    """A config problem, with the path of the offending field."""


@dataclasses.dataclass(frozen=True, slots=True)
class SimBackend:
    """A configured (not yet started) provider and the port it asks for (0 = any free port)."""

    provider: SimProvider
    port: int


def load_config(path: str | Path) -> list[SimBackend]:
    """Parse a config file; raise SimConfigError naming the field on any problem."""
    try:
        doc = yaml.safe_load(Path(path).read_text())  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as exc:
        raise SimConfigError(f"{path}: {exc}") from exc
    return backends_from(doc)


def backends_from(doc: Any) -> list[SimBackend]:
    """Backends from an already parsed config document."""
    if not isinstance(doc, dict) or not isinstance(doc.get("backends"), list) or not doc["backends"]:
        raise SimConfigError("backends: a non-empty list is required")
    seed = doc.get("seed")
    backends = []
    for index, spec in enumerate(doc["backends"]):
        where = f"backends[{index}]"
        try:
            provider = _provider(spec, None if seed is None else int(seed) + index, where)
            backends.append(SimBackend(provider, int(spec.get("port", 0))))
        except SimConfigError:
            raise
        except (ValueError, TypeError) as exc:
            raise SimConfigError(f"{where}: {exc}") from exc
    names = [b.provider.name for b in backends]
    if len(set(names)) != len(names):
        raise SimConfigError("backends: names must be unique")
    return backends


def _provider(spec: Any, seed: int | None, where: str) -> SimProvider:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise SimConfigError(f"{where}.name: required")
    if "behavior" in spec and "schedule" in spec:
        raise SimConfigError(f"{where}: give behavior or schedule, not both")
    phases = spec.get("schedule") or [{"at": 0, "behavior": spec.get("behavior") or {}}]
    if not isinstance(phases, list):
        raise SimConfigError(f"{where}.schedule: a list of {{at, behavior}} is required")
    behavior, timeline = Behavior(), []
    for number, phase in enumerate(phases):
        here = f"{where}.schedule[{number}]"
        if not isinstance(phase, dict):
            raise SimConfigError(f"{here}: expected {{at, behavior}}")
        behavior = _behavior(behavior, phase.get("behavior") or {}, f"{here}.behavior")
        timeline.append((_seconds(phase.get("at", 0), f"{here}.at"), behavior))
    models = tuple(spec.get("models") or ("sim-model",))
    return SimProvider(
        spec["name"],
        cast(Kind, spec.get("kind", "openai")),
        schedule=Schedule(tuple(timeline)),
        models=models,
        seed=seed,
    )


def _behavior(base: Behavior, spec: Any, where: str) -> Behavior:
    """`base` with the fields named in `spec` changed."""
    if not isinstance(spec, dict):
        raise SimConfigError(f"{where}: a mapping is required")
    changes: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in _BEHAVIOR_FIELDS:
            raise SimConfigError(f"{where}.{key}: unknown field (known: {', '.join(sorted(_BEHAVIOR_FIELDS))})")
        if key in _LATENCY_FIELDS:
            changes[key] = _latency(value, f"{where}.{key}")
        elif key in _SECONDS_FIELDS:
            changes[key] = _seconds(value, f"{where}.{key}")
        elif key == "error_statuses":
            changes[key] = tuple(int(s) for s in value)
        elif key == "unsupported_params":
            if not isinstance(value, list):
                raise SimConfigError(f"{where}.{key}: a list of request field names is required")
            changes[key] = tuple(str(p) for p in value)
        else:
            changes[key] = value
    try:
        return dataclasses.replace(base, **changes)
    except (ValueError, TypeError) as exc:
        raise SimConfigError(f"{where}: {exc}") from exc


def _latency(value: Any, where: str) -> Latency:
    if isinstance(value, dict) and set(value) == {"uniform"}:
        low, high = value["uniform"]
        return Latency.uniform(_seconds(low, where), _seconds(high, where))
    if isinstance(value, dict) and set(value) == {"median", "p95"}:
        return Latency.lognormal(_seconds(value["median"], where), _seconds(value["p95"], where))
    if isinstance(value, dict):
        raise SimConfigError(f"{where}: expected seconds, a duration, {{uniform: [a, b]}} or {{median, p95}}")
    return Latency.fixed(_seconds(value, where))


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise SimConfigError(f"{where}: {exc}") from exc


def run_sim(argv: Sequence[str] | None = None) -> int:
    """`llmroute sim CONFIG`: start every backend in CONFIG, print their URLs, serve until stopped."""
    parser = argparse.ArgumentParser(prog="llmroute sim", description="Run simulated LLM backends.")
    parser.add_argument("config", help="YAML or JSON file describing the backends")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        backends = load_config(args.config)
    except SimConfigError as exc:
        print(f"llmroute sim: {exc}", file=sys.stderr)
        return 2
    return run(serve(backends, args.host))


async def serve(backends: Sequence[SimBackend], host: str = "127.0.0.1") -> int:
    """Start the backends, print `name<TAB>kind<TAB>url` for each, and serve until SIGINT or SIGTERM."""
    for backend in backends:
        provider = backend.provider
        await provider.start(host, backend.port)
        print(f"{provider.name}\t{provider.kind}\t{provider.url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for backend in backends:
        await backend.provider.stop()
    return 0
