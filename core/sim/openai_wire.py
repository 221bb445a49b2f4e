"""The OpenAI provider (and Azure OpenAI's variant of it): where its APIs live, its key, its error shape;
and the chat completions format. The other OpenAI APIs have a format module each."""

from __future__ import annotations

from typing import Any

from llmroute.http import Request
from llmroute.sim.completions_wire import COMPLETIONS
from llmroute.sim.dialect import ChatRequest, Completion, Endpoint, Format, dump, max_tokens
from llmroute.sim.embeddings_wire import EMBEDDINGS
from llmroute.sim.openai_common import DEPLOYMENT, body_and_model, event, finish_reason, text, usage
from llmroute.sim.responses_wire import RESPONSES
from llmroute.sim.tools import ToolCall, first_call

_ERROR_KINDS = {  # status -> (type, code), as api.openai.com reports them
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}
_SUFFIXES = (  # checked in order: chat/completions before completions
    ("/chat/completions", Endpoint.CHAT),
    ("/completions", Endpoint.COMPLETIONS),
    ("/embeddings", Endpoint.EMBEDDINGS),
    ("/responses", Endpoint.RESPONSES),
)


class ChatFormat:
    """OpenAI chat completions: JSON and `data:` SSE chunks ending in `data: [DONE]`."""

    id_prefix = "chatcmpl-"
    generates = True

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        checked = body_and_model(request, payload)
        if isinstance(checked, str):
            return checked
        payload, model = checked
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            return "messages must be a non-empty array"
        limit = max_tokens(payload, "max_completion_tokens", "max_tokens")
        if isinstance(limit, str):
            return limit
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return ChatRequest(model, payload.get("stream") is True, limit, include_usage, tool=_tool_call(payload))

    def completion_body(self, completion: Completion) -> bytes:
        return dump(
            {
                "id": completion.id,
                "object": "chat.completion",
                "created": completion.created,
                "model": completion.model,
                "choices": [
                    {
                        "index": 0,
                        "message": _message(completion),
                        "logprobs": None,
                        "finish_reason": finish_reason(completion),
                    }
                ],
                "usage": usage(completion),
            }
        )

    def stream_start(self, completion: Completion) -> bytes:
        return _chunk(completion, {"role": "assistant", "content": ""}, None)

    def stream_token(self, completion: Completion, text: str) -> bytes:
        return _chunk(completion, {"content": text}, None)

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        end = b""
        if completion.tool is not None:  # the call in two deltas, as OpenAI streams them: name, then arguments
            call = _call_json(completion.tool)
            opening = {**call, "function": {"name": completion.tool.name, "arguments": ""}}
            end += _chunk(completion, {"tool_calls": [{"index": 0, **opening}]}, None)
            arguments = {"index": 0, "function": {"arguments": call["function"]["arguments"]}}
            end += _chunk(completion, {"tool_calls": [arguments]}, None)
        end += _chunk(completion, {}, finish_reason(completion))
        if include_usage:
            end += event({**_chunk_fields(completion), "choices": [], "usage": usage(completion)})
        return end + b"data: [DONE]\n\n"

    def stream_error(self, message: str) -> bytes | None:
        return None  # OpenAI-compatible servers break off the connection


FORMATS: dict[Endpoint, Format] = {
    Endpoint.CHAT: ChatFormat(),
    Endpoint.COMPLETIONS: COMPLETIONS,
    Endpoint.EMBEDDINGS: EMBEDDINGS,
    Endpoint.RESPONSES: RESPONSES,
}
"""The OpenAI APIs the simulator speaks, by endpoint."""


class OpenAIDialect:
    """POST .../chat/completions, /completions, /embeddings, /responses and GET .../models with
    `Authorization: Bearer KEY`."""

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "POST":
            return next((endpoint for suffix, endpoint in _SUFFIXES if request.path.endswith(suffix)), None)
        if request.method == "GET" and request.path.endswith("/models"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None

    def format(self, endpoint: Endpoint) -> Format | None:
        return FORMATS.get(endpoint)

    def error_body(self, status: int, message: str) -> bytes:
        kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return dump({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def context_error(self, prompt_tokens: int, window: int) -> bytes:
        message = (
            f"This model's maximum context length is {window} tokens. However, your messages resulted in"
            f" {prompt_tokens} tokens. Please reduce the length of the messages."
        )
        error = {"message": message, "type": "invalid_request_error", "param": "messages"}
        return dump({"error": {**error, "code": "context_length_exceeded"}})

    def parameter_error(self, param: str) -> bytes:
        message = f"Unsupported parameter: '{param}' is not supported with this model."
        if param == "max_tokens":  # what OpenAI's reasoning models say
            message += " Use 'max_completion_tokens' instead."
        error = {"message": message, "type": "invalid_request_error", "param": param}
        return dump({"error": {**error, "code": "unsupported_parameter"}})

    def models_body(self, models: tuple[str, ...]) -> bytes:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "llmroute-sim"} for m in models]
        return dump({"object": "list", "data": data})


class AzureOpenAIDialect(OpenAIDialect):
    """POST /openai/deployments/{deployment}/{api}?api-version=... (and /openai/responses) with an `api-key`."""

    def route(self, request: Request) -> Endpoint | None:
        if "api-version=" not in request.query:
            return None
        if request.method == "POST":
            if request.path == "/openai/responses":
                return Endpoint.RESPONSES
            match = DEPLOYMENT.match(request.path)
            return super().route(request) if match else None
        if request.method == "GET" and request.path in ("/openai/models", "/openai/deployments"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("api-key")

    def error_body(self, status: int, message: str) -> bytes:
        return dump({"error": {"code": str(status), "message": message}})


def _chunk_fields(completion: Completion) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
    }


def _chunk(completion: Completion, delta: dict[str, Any], finish: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return event({**_chunk_fields(completion), "choices": [choice]})


def _tool_call(payload: dict[str, Any]) -> ToolCall | None:
    """The call of the first function tool offered, unless tools are off or the last message is a result."""
    tools = payload.get("tools")
    messages = payload["messages"]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if not isinstance(tools, list) or not tools or payload.get("tool_choice") == "none" or last.get("role") == "tool":
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    if not isinstance(function, dict):
        return None
    return first_call("call_sim_1", function.get("name"), function.get("parameters"))


def _call_json(tool: ToolCall) -> dict[str, Any]:
    arguments = dump(tool.arguments).decode()
    return {"id": tool.id, "type": "function", "function": {"name": tool.name, "arguments": arguments}}


def _message(completion: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text(completion.completion_tokens), "refusal": None}
    if completion.tool is not None:
        message["tool_calls"] = [_call_json(completion.tool)]
    return message
