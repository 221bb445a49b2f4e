"""The inbound APIs the sidecar serves, one module each, found by request path."""

from __future__ import annotations

from llmroute.model import Api
from llmroute.sidecar.inbound.base import Inbound, Parsed
from llmroute.sidecar.inbound.chat import CHAT
from llmroute.sidecar.inbound.completions import COMPLETIONS
from llmroute.sidecar.inbound.embeddings import EMBEDDINGS
from llmroute.sidecar.inbound.messages import COUNT_TOKENS, MESSAGES
from llmroute.sidecar.inbound.responses import RESPONSES

INBOUND: tuple[Inbound, ...] = (CHAT, MESSAGES, RESPONSES, EMBEDDINGS, COMPLETIONS)
BY_PATH: dict[str, Inbound] = {path: api for api in (*INBOUND, COUNT_TOKENS) for path in api.paths}
"""Every path served; COUNT_TOKENS is the one not dispatched (see llmroute.sidecar.count_tokens)."""
BY_API: dict[Api, Inbound] = {api.api: api for api in INBOUND}

__all__ = ["BY_API", "BY_PATH", "COUNT_TOKENS", "INBOUND", "Inbound", "Parsed"]
