"""The Anthropic Messages API wire format (JSON and its named SSE events), and its token counting."""

from __future__ import annotations

from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, Endpoint, Format, dump, max_tokens
from llmroute.sim.tools import ToolCall, first_call

_ERROR_TYPES = {  # as documented at docs.anthropic.com/en/api/errors
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class CountTokensFormat:
    """POST .../messages/count_tokens: the prompt's size, `{"input_tokens": N}`; nothing generated."""

    id_prefix = ""
    generates = False

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        if "anthropic-version" not in request.headers:
            return "anthropic-version: header is required"
        if not isinstance(payload, dict):
            return "request body must be a JSON object"
        if not isinstance(payload.get("model"), str) or not payload["model"]:
            return "model: Field required"
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            return "messages: Field required"
        return ChatRequest(payload["model"], False, None, include_usage=False)

    def completion_body(self, completion: Completion) -> bytes:
        return dump({"input_tokens": completion.prompt_tokens})

    # parse never asks for a stream, so these are never called.
    def stream_start(self, completion: Completion) -> bytes:
        return b""

    def stream_token(self, completion: Completion, text: str) -> bytes:
        return b""

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        return b""

    def stream_error(self, message: str) -> bytes | None:
        return None


COUNT_TOKENS = CountTokensFormat()


class AnthropicDialect:
    """POST .../messages, .../messages/count_tokens and GET .../models with `x-api-key` and
    `anthropic-version` headers. The provider is its own Messages format."""

    id_prefix = "msg_"
    generates = True

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "POST" and request.path.endswith("/messages"):
            return Endpoint.CHAT
        if request.method == "POST" and request.path.endswith("/messages/count_tokens"):
            return Endpoint.COUNT_TOKENS
        if request.method == "GET" and request.path.endswith("/models"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("x-api-key")

    def format(self, endpoint: Endpoint) -> Format | None:
        if endpoint is Endpoint.COUNT_TOKENS:
            return COUNT_TOKENS
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
        return ChatRequest(model, payload.get("stream") is True, limit, include_usage=True, tool=_tool_call(payload))

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error")
        return dump({"type": "error", "error": {"type": kind, "message": message}, "request_id": None})

    def context_error(self, prompt_tokens: int, window: int) -> bytes:
        message = f"prompt is too long: {prompt_tokens} tokens > {window} maximum"
        return dump({"type": "error", "error": {"type": "invalid_request_error", "message": message}})

    def parameter_error(self, param: str) -> bytes:
        message = f"{param}: Extra inputs are not permitted"
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
                "content": _content(completion),
                "model": completion.model,
                "stop_reason": _stop_reason(completion),
                "stop_sequence": None,
                "stop_details": None,
                "container": None,
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
            "stop_details": None,
            "container": None,
            "usage": _usage(completion, 1),
        }
        return (
            _event("message_start", {"type": "message_start", "message": message})
            + _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": "", "citations": None},
                },
            )
            + _event("ping", {"type": "ping"})
        )

    def stream_token(self, completion: Completion, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        end = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
        if completion.tool is not None:  # a tool_use block after the text, its input in one input_json_delta
            block = {**_tool_use(completion.tool), "input": {}}
            partial = {"type": "input_json_delta", "partial_json": dump(completion.tool.arguments).decode()}
            end += (
                _event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})
                + _event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": partial})
                + _event("content_block_stop", {"type": "content_block_stop", "index": 1})
            )
        delta = {"stop_reason": _stop_reason(completion), "stop_sequence": None}
        delta |= {"stop_details": None, "container": None}
        usage = _usage(completion, completion.completion_tokens)
        for name in ("cache_creation", "inference_geo", "service_tier"):  # not in message_delta's usage
            del usage[name]
        return (
            end
            + _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            + _event("message_stop", {"type": "message_stop"})
        )

    def stream_error(self, message: str) -> bytes | None:
        return _event("error", {"type": "error", "error": {"type": "overloaded_error", "message": message}})


def _stop_reason(completion: Completion) -> str:
    if completion.truncated:
        return "max_tokens"
    return "tool_use" if completion.tool is not None else "end_turn"


def _tool_call(payload: dict[str, Any]) -> ToolCall | None:
    """The call of the first custom tool offered, unless tools are off or the last turn holds a tool result."""
    tools = payload.get("tools")
    choice = payload.get("tool_choice")
    if not isinstance(tools, list) or not tools or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    last = payload["messages"][-1]
    content = last.get("content") if isinstance(last, dict) else None
    if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    tool = tools[0] if isinstance(tools[0], dict) else {}
    return first_call("toolu_sim_1", tool.get("name"), tool.get("input_schema"))


def _tool_use(tool: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool.id, "name": tool.name, "input": tool.arguments, "caller": {"type": "direct"}}


def _content(completion: Completion) -> list[dict[str, Any]]:
    text = {"type": "text", "text": " ".join(["token"] * completion.completion_tokens), "citations": None}
    return [text, _tool_use(completion.tool)] if completion.tool is not None else [text]


def _usage(completion: Completion, output_tokens: int) -> dict[str, Any]:
    # Anthropic's input_tokens excludes the tokens read from and written to the prompt cache.
    return {
        "input_tokens": completion.prompt_tokens - completion.cached_tokens - completion.cache_write_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": completion.cached_tokens,
        "cache_creation_input_tokens": completion.cache_write_tokens,
        "cache_creation": None,
        "inference_geo": None,
        "output_tokens_details": None,
        "server_tool_use": None,
        "service_tier": None,
    }


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dump(data) + b"\n\n"
