"""Calls to LLM backends (OpenAI, Azure OpenAI, Anthropic) behind one OpenAI-shaped interface."""

from llmroute.sidecar.upstream.client import CompletionStream, Upstream
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Completion, Usage

__all__ = ["Completion", "CompletionStream", "Upstream", "UpstreamError", "Usage"]
