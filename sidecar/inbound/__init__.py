"""The inbound APIs the sidecar serves, one module each, found by request path."""

from __future__ import annotations

from llmroute.model import Api
from llmroute.sidecar.inbound.base import Inbound, Parsed
from llmroute.sidecar.inbound.chat import CHAT
from llmroute.sidecar.inbound.completions import COMPLETIONS
from llmroute.sidecar.inbound.embeddings import EMBEDDINGS
from llmroute.sidecar.inbound.messages import MESSAGES
from llmroute.sidecar.inbound.responses import RESPONSES

INBOUND: tuple[Inbound, ...] = (CHAT, MESSAGES, RESPONSES, EMBEDDINGS, COMPLETIONS)
BY_PATH: dict[str, Inbound] = {path: api for api in INBOUND for path in api.paths}
BY_API: dict[Api, Inbound] = {api.api: api for api in INBOUND}

__all__ = ["BY_API", "BY_PATH", "INBOUND", "Inbound", "Parsed"]
