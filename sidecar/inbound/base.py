"""What every inbound API module supplies: how to read its requests and how to write its errors and stream
endings. The modules are data for the app (a table by path), so the next API is a module and an entry."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.errors import ProxyError, error_body
from llmroute.sidecar.upstream.errors import Family

CHARS_PER_TOKEN = 4
"""The prompt estimate before a request is sent: about four characters a token."""
DEFAULT_OUTPUT_TOKENS = 300
"""The completion estimate when a request sets no limit."""


@dataclass(slots=True)
class Parsed:
    """What the router needs from one request, read once at the edge."""

    model: str
    stream: bool
    needs: frozenset[str]
    """Capabilities a backend must declare to serve it (tools, vision, json; n>1 and logprobs)."""
    tokens_in: int
    tokens_out: int
    """Rough prompt and completion sizes, for pricing before the request is sent."""


def invalid(message: str) -> ProxyError:
    """A 400 for a malformed request."""
    return ProxyError(400, message, "invalid_request")


def require_model(body: dict[str, Any]) -> str:
    """The `model` every routed API names."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a string")
    return model


def streams(body: dict[str, Any]) -> bool:
    """Whether the request asks for a stream. The sidecar answers JSON or SSE by it, so anything but a boolean
    (or null, OpenAI's "not set") is a 400 here rather than a guess that the backend might read otherwise."""
    value = body.get("stream")
    if value is None or isinstance(value, bool):
        return value is True
    shown = json.dumps(value) if isinstance(value, str | int | float) else f"a JSON {type(value).__name__}"
    raise invalid(f"'stream' must be a boolean, not {shown[:40]}")


def estimate_tokens(value: Any) -> int:
    """About how many tokens `value` (text, or JSON of parts) holds."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return max(len(text) // CHARS_PER_TOKEN, 1)


def has_part(messages: Any, kind: str) -> bool:
    """Whether any message (or input item) of `messages` has a content part of type `kind` (an image,
    which asks for vision)."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(part, dict) and part.get("type") == kind for part in content):
            return True
    return False


def has_role(items: Any, *roles: str) -> bool:
    """Whether any message (or input item) of `items` has one of these roles."""
    return isinstance(items, list) and any(isinstance(m, dict) and m.get("role") in roles for m in items)


def output_limit(body: dict[str, Any], *names: str) -> int:
    """The first positive integer limit among `names`, else the default estimate."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return DEFAULT_OUTPUT_TOKENS


class Inbound:
    """One inbound API. Subclasses set the class attributes and `parse`; the rest follows the family."""

    api: Api
    family: Family = "openai"
    paths: tuple[str, ...] = ()
    """Request paths served, with and without the /v1 prefix (SDKs configured either way)."""
    forward_headers: tuple[str, ...] = ()
    """App headers passed on to a backend that serves this API natively (protocol versions, betas)."""
    shadow: dict[str, Any] = {}
    """A tiny request in this API that measures a backend without copying any user data to it."""
    done: bytes = b""
    """What ends a stream after its last event (chat's `data: [DONE]`)."""

    def forwarded(self, headers: Mapping[str, str]) -> dict[str, str] | None:
        """The app's `forward_headers` it sent, for a native upstream; None when there are none."""
        if not self.forward_headers:
            return None  # most APIs: no dict to build on the hot path
        return {name: headers[name] for name in self.forward_headers if name in headers} or None

    def parse(self, body: dict[str, Any]) -> Parsed:
        """The routing facts of a request body; ProxyError (400) when it is malformed."""
        raise NotImplementedError

    def add_system(self, body: dict[str, Any], prompt: str) -> bool:
        """Give `body` the system prompt `prompt` unless the app set one itself; whether it was added. APIs
        without system prompts (embeddings, legacy completions) add nothing."""
        return False

    def error_body(self, error: ProxyError) -> bytes:
        """`error` in this API's shape."""
        return error_body(error.status, error.message, error.code, self.family)

    def error_event(self, error: ProxyError, sequence: int = 0) -> bytes:
        """`error` as the last SSE event of a stream that had already begun; `sequence` is the next event
        number, for APIs that number their events (Responses)."""
        if self.family == "anthropic":
            return b"event: error\ndata: " + self.error_body(error) + b"\n\n"
        return b"data: " + self.error_body(error) + b"\n\n"

    def stream_end(self, cost: float) -> bytes:
        """After the last event: the cost as an SSE comment (clients ignore comments), then `done`."""
        return f": x-llmroute-cost-usd={cost:.8f}\n\n".encode() + self.done
