"""OpenAI's legacy text completions format: JSON and `data:` SSE chunks ending in `data: [DONE]`."""

from __future__ import annotations

from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, dump, max_tokens
from llmroute.sim.openai_common import body_and_model, event, finish_reason, text, usage

DEFAULT_MAX_TOKENS = 16
"""The legacy API's own default for max_tokens."""


class CompletionsFormat:
    """POST .../completions."""

    id_prefix = "cmpl-"
    generates = True

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        checked = body_and_model(request, payload)
        if isinstance(checked, str):
            return checked
        payload, model = checked
        if not isinstance(payload.get("prompt"), str | list):
            return "you must provide a prompt parameter"
        limit = max_tokens(payload, "max_tokens")
        if isinstance(limit, str):
            return limit
        options = payload.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return ChatRequest(model, payload.get("stream") is True, limit or DEFAULT_MAX_TOKENS, include_usage)

    def completion_body(self, completion: Completion) -> bytes:
        choice = {
            "text": text(completion.completion_tokens),
            "index": 0,
            "logprobs": None,
            "finish_reason": finish_reason(completion),
        }
        return dump({**_fields(completion), "choices": [choice], "usage": usage(completion)})

    def stream_start(self, completion: Completion) -> bytes:
        return b""

    def stream_token(self, completion: Completion, text: str) -> bytes:
        return _chunk(completion, text, None)

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        end = _chunk(completion, "", finish_reason(completion))
        if include_usage:
            end += event({**_fields(completion), "choices": [], "usage": usage(completion)})
        return end + b"data: [DONE]\n\n"

    def stream_error(self, message: str) -> bytes | None:
        return None  # OpenAI-compatible servers break off the connection


def _fields(completion: Completion) -> dict[str, Any]:
    return {
        "id": completion.id,
        "object": "text_completion",
        "created": completion.created,
        "model": completion.model,
    }


def _chunk(completion: Completion, piece: str, finish: str | None) -> bytes:
    choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
    return event({**_fields(completion), "choices": [choice]})


COMPLETIONS = CompletionsFormat()
