"""The Anthropic Messages API wire format (JSON and its named SSE events)."""

from __future__ import annotations

from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, Endpoint, Format, dump, max_tokens

_ERROR_TYPES = {  # as documented at docs.anthropic.com/en/api/errors
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class AnthropicDialect:
    """POST .../messages and GET .../models with `x-api-key` and `anthropic-version` headers. The provider is
    its own Messages format."""

    id_prefix = "msg_"
    generates = True

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "POST" and request.path.endswith("/messages"):
            return Endpoint.CHAT
        if request.method == "GET" and request.path.endswith("/models"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-api-key")

    def format(self, endpoint: Endpoint) -> Format | None:
        return self if endpoint is Endpoint.CHAT else None

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        if "anthropic-version" not in request.headers:
            return "anthropic-version: header is required"
        if not isinstance(payload, dict):
            return "request body must be a JSON object"
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return "model: Field required"
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            return "messages: Field required"
        limit = max_tokens(payload, "max_tokens")
        if limit is None:
            return "max_tokens: Field required"
        if isinstance(limit, str):
            return limit
        return ChatRequest(model, payload.get("stream") is True, limit, include_usage=True)

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error")
        return dump({"type": "error", "error": {"type": kind, "message": message}})

    def context_error(self, prompt_tokens: int, window: int) -> bytes:
        message = f"prompt is too long: {prompt_tokens} tokens > {window} maximum"
        return dump({"type": "error", "error": {"type": "invalid_request_error", "message": message}})

    def models_body(self, models: tuple[str, ...]) -> bytes:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in models]
        return dump({"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]})

    def completion_body(self, completion: Completion) -> bytes:
        return dump(
            {
                "id": completion.id,
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": " ".join(["token"] * completion.completion_tokens)}],
                "model": completion.model,
                "stop_reason": _stop_reason(completion),
                "stop_sequence": None,
                "usage": _usage(completion, completion.completion_tokens),
            }
        )

    def stream_start(self, completion: Completion) -> bytes:
        message: dict[str, Any] = {
            "id": completion.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": completion.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(completion, 1),
        }
        return (
            _event("message_start", {"type": "message_start", "message": message})
            + _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            + _event("ping", {"type": "ping"})
        )

    def stream_token(self, completion: Completion, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        return (
            _event("content_block_stop", {"type": "content_block_stop", "index": 0})
            + _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _stop_reason(completion), "stop_sequence": None},
                    "usage": {"output_tokens": completion.completion_tokens},
                },
            )
            + _event("message_stop", {"type": "message_stop"})
        )

    def stream_error(self, message: str) -> bytes | None:
        return _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": message}})


def _stop_reason(completion: Completion) -> str:
    return "max_tokens" if completion.truncated else "end_turn"


def _usage(completion: Completion, output_tokens: int) -> dict[str, int]:
    # Anthropic's input_tokens excludes the tokens read from the prompt cache.
    return {
        "input_tokens": completion.prompt_tokens - completion.cached_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": completion.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dump(data) + b"\n\n"
