"""Simulated LLM providers (OpenAI, Azure OpenAI, Anthropic) with scripted latency and failures."""

from llmroute.sim.behavior import Behavior, Latency, Schedule
from llmroute.sim.config import SimBackend, SimConfigError, load_config, run_sim, serve
from llmroute.sim.provider import Kind, SimProvider
from llmroute.sim.stats import SimStats

__all__ = [
    "Behavior",
    "Kind",
    "Latency",
    "Schedule",
    "SimBackend",
    "SimConfigError",
    "SimProvider",
    "SimStats",
    "load_config",
    "run_sim",
    "serve",
]
