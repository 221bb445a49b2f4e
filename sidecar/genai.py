"""The OpenTelemetry GenAI semantic conventions as the sidecar uses them: one place for the attribute
values and histogram buckets that spans (llmroute.sidecar.otel) and metrics (llmroute.sidecar.metrics) share.

Source: the GenAI semantic conventions (open-telemetry/semantic-conventions-genai, docs/gen-ai/
gen-ai-spans.md and gen-ai-metrics.md); every name there is still at stability "Development".
"""

from __future__ import annotations

import re

from llmroute.model import Api
from llmroute.model.spec import Provider

PROVIDER_NAMES: dict[Provider, str] = {"openai": "openai", "azure-openai": "azure.ai.openai", "anthropic": "anthropic"}
"""`gen_ai.provider.name` of each backend provider (the convention's well-known values)."""

OPERATION_NAMES: dict[Api, str] = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
}
"""`gen_ai.operation.name` of each inbound API (a translated call performs the same operation upstream)."""
COUNT_TOKENS = "count_tokens"
"""`gen_ai.operation.name` of POST /v1/messages/count_tokens: not one of the convention's well-known values (none
applies), so the provider's own name for it, as the convention advises."""

DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""Seconds: the advised boundaries of gen_ai.client.operation.duration and .time_to_first_chunk."""
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
"""Tokens: the advised boundaries of gen_ai.client.token.usage."""

_MODEL = re.compile(rb'(?<!\\)"model"\s*:\s*"([^"\\]{1,256})"')


def response_model(head: bytes) -> str | None:
    """`gen_ai.response.model`: the first `"model"` field of an answer (a JSON body, or a stream's first
    events), which every supported API puts before any content. Read only when a span records it."""
    found = _MODEL.search(head)
    return found.group(1).decode("utf-8", "replace") if found else None
