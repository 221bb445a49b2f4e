"""LLMRoute: latency-aware LLM routing for Kubernetes, a sidecar data plane and a kopf control plane."""

__version__ = "0.1.0"
