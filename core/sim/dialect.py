"""What a provider's wire format must supply: routing, auth, request parsing and response bytes."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Protocol

from llmroute.http import Request


class Endpoint(enum.Enum):
    CHAT = "chat"
    MODELS = "models"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the simulator acts on."""

    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool  # OpenAI streams: stream_options.include_usage


@dataclass(frozen=True, slots=True)
class Completion:
    """What the simulated model produced for one request."""

    id: str
    model: str
    prompt_tokens: int  # including cached ones
    completion_tokens: int
    cached_tokens: int
    truncated: bool  # stopped by max_tokens
    created: int


class Dialect(Protocol):
    """One provider API (OpenAI, Azure OpenAI, Anthropic Messages)."""

    id_prefix: str

    def route(self, request: Request) -> Endpoint | None: ...

    def api_key(self, headers: dict[str, str]) -> str | None: ...

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        """The request, or why it is invalid (answered with 400)."""
        ...

    def error_body(self, status: int, message: str) -> bytes: ...

    def models_body(self, models: tuple[str, ...]) -> bytes: ...

    def completion_body(self, completion: Completion) -> bytes: ...

    def stream_start(self, completion: Completion) -> bytes: ...

    def stream_token(self, completion: Completion, text: str) -> bytes: ...

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes: ...

    def stream_error(self, message: str) -> bytes | None:
        """An in-band error event, or None when the API just drops the connection."""
        ...


def dump(value: Any) -> bytes:
    """Compact JSON, as the real APIs send it."""
    return json.dumps(value, separators=(",", ":")).encode()


def max_tokens(payload: dict[str, Any], *keys: str) -> int | str | None:
    """The first of `keys` present as a positive int, None if none is, or an error message."""
    for key in keys:
        value = payload.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{key} must be a positive integer"
        return value
    return None
