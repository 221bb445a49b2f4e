"""What a simulated provider must supply: a Dialect (the provider: routing, auth, error and model-list
bodies) and, per API it serves, a Format (that API's request parsing and response bytes)."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Protocol

from llmroute.http import Request
from llmroute.sim.tools import ToolCall


class Endpoint(enum.Enum):
    CHAT = "chat"
    """The provider's own conversation API: OpenAI chat completions, Anthropic Messages."""
    MODELS = "models"
    EMBEDDINGS = "embeddings"
    COMPLETIONS = "completions"
    RESPONSES = "responses"
    COUNT_TOKENS = "count_tokens"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat request the simulator acts on."""

    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool  # OpenAI streams: stream_options.include_usage
    inputs: int = 1  # embeddings: how many inputs to embed
    base64: bool = False  # embeddings: encoding_format base64 (what the openai SDK asks for)
    tool: ToolCall | None = None  # the tool the model calls after its text (see llmroute.sim.tools)


@dataclass(frozen=True, slots=True)
class Completion:
    """What the simulated model produced for one request."""

    id: str
    model: str
    prompt_tokens: int  # including cached and cache-written ones
    completion_tokens: int
    cached_tokens: int
    truncated: bool  # stopped by max_tokens
    created: int
    inputs: int = 1  # embeddings: vectors to return
    base64: bool = False  # embeddings: vectors as base64 of little-endian float32
    tool: ToolCall | None = None
    cache_write_tokens: int = 0  # Anthropic only


class Format(Protocol):
    """One API's request and answer shapes (chat completions, Messages, embeddings, ...)."""

    id_prefix: str
    generates: bool
    """Whether answers hold generated tokens (embeddings do not)."""

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        """The request, or why it is invalid (answered with 400)."""
        ...

    def completion_body(self, completion: Completion) -> bytes: ...

    def stream_start(self, completion: Completion) -> bytes: ...

    def stream_token(self, completion: Completion, text: str) -> bytes: ...

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes: ...

    def stream_error(self, message: str) -> bytes | None:
        """An in-band error event, or None when the API just drops the connection."""
        ...


class Dialect(Protocol):
    """One provider (OpenAI, Azure OpenAI, Anthropic): where its APIs live, its key, its error shape."""

    def route(self, request: Request) -> Endpoint | None: ...

    def api_key(self, headers: dict[str, str]) -> str | None: ...

    def format(self, endpoint: Endpoint) -> Format | None:
        """The body format of an endpoint it serves; None for one it does not (answered with 404)."""
        ...

    def error_body(self, status: int, message: str) -> bytes: ...

    def context_error(self, prompt_tokens: int, window: int) -> bytes:
        """The provider's own 400 body for a prompt longer than the model's context window."""
        ...

    def parameter_error(self, param: str) -> bytes:
        """The provider's own 400 body for a request field the model does not take."""
        ...

    def models_body(self, models: tuple[str, ...]) -> bytes: ...


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
