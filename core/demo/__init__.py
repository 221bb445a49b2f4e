"""`llmroute demo`: the embedded default, the 21:00 incident replayed through a real sidecar."""

from llmroute.demo.run import run_demo

__all__ = ["run_demo"]
