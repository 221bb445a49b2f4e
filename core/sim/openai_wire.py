"""The OpenAI chat completions wire format, and Azure OpenAI's variant of it."""

from __future__ import annotations

import re
from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, Endpoint, dump, max_tokens

_ERROR_KINDS = {  # status -> (type, code), as api.openai.com reports them
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "unknown_url"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}
_AZURE_CHAT = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


class OpenAIDialect:
    """POST .../chat/completions and GET .../models with `Authorization: Bearer KEY`."""

    id_prefix = "chatcmpl-"

    def route(self, request: Request) -> Endpoint | None:
        if request.method == "POST" and request.path.endswith("/chat/completions"):
            return Endpoint.CHAT
        if request.method == "GET" and request.path.endswith("/models"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        if not isinstance(payload, dict):
            return "request body must be a JSON object"
        model = self._model(request, payload)
        if not isinstance(model, str) or not model:
            return "you must provide a model parameter"
        if not isinstance(payload.get("messages"), list) or not payload["messages"]:
            return "messages must be a non-empty array"
        limit = max_tokens(payload, "max_completion_tokens", "max_tokens")
        if isinstance(limit, str):
            return limit
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return ChatRequest(model, payload.get("stream") is True, limit, include_usage)

    def _model(self, request: Request, payload: dict[str, Any]) -> object:
        return payload.get("model")

    def error_body(self, status: int, message: str) -> bytes:
        kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
        return dump({"error": {"message": message, "type": kind, "param": None, "code": code}})

    def models_body(self, models: tuple[str, ...]) -> bytes:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "llmroute-sim"} for m in models]
        return dump({"object": "list", "data": data})

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
                        "message": {
                            "role": "assistant",
                            "content": _text(completion.completion_tokens),
                            "refusal": None,
                        },
                        "logprobs": None,
                        "finish_reason": _finish_reason(completion),
                    }
                ],
                "usage": _usage(completion),
                "system_fingerprint": None,
            }
        )

    def stream_start(self, completion: Completion) -> bytes:
        return _chunk(completion, {"role": "assistant", "content": ""}, None)

    def stream_token(self, completion: Completion, text: str) -> bytes:
        return _chunk(completion, {"content": text}, None)

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        end = _chunk(completion, {}, _finish_reason(completion))
        if include_usage:
            end += _event({**_chunk_fields(completion), "choices": [], "usage": _usage(completion)})
        return end + b"data: [DONE]\n\n"

    def stream_error(self, message: str) -> bytes | None:
        return None  # OpenAI-compatible servers break off the connection


class AzureOpenAIDialect(OpenAIDialect):
    """POST /openai/deployments/{deployment}/chat/completions?api-version=... with an `api-key` header."""

    def route(self, request: Request) -> Endpoint | None:
        if "api-version=" not in request.query:
            return None
        if request.method == "POST" and _AZURE_CHAT.match(request.path):
            return Endpoint.CHAT
        if request.method == "GET" and request.path in ("/openai/models", "/openai/deployments"):
            return Endpoint.MODELS
        return None

    def api_key(self, headers: dict[str, str]) -> str | None:
        return headers.get("api-key")

    def _model(self, request: Request, payload: dict[str, Any]) -> object:
        match = _AZURE_CHAT.match(request.path)
        return payload.get("model") or (match.group(1) if match else None)

    def error_body(self, status: int, message: str) -> bytes:
        return dump({"error": {"code": str(status), "message": message}})


def _text(tokens: int) -> str:
    return " ".join(["token"] * tokens)


def _finish_reason(completion: Completion) -> str:
    return "length" if completion.truncated else "stop"


def _usage(completion: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _chunk_fields(completion: Completion) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": "chat.completion.chunk",
        "created": completion.created,
        "model": completion.model,
        "system_fingerprint": None,
    }


def _chunk(completion: Completion, delta: dict[str, Any], finish_reason: str | None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return _event({**_chunk_fields(completion), "choices": [choice]})


def _event(value: dict[str, Any]) -> bytes:
    return b"data: " + dump(value) + b"\n\n"
