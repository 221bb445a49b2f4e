"""POST /v1/responses: OpenAI's Responses API, JSON and named SSE events.

Natively served by backends whose `apis` has `responses`; stateless requests are also translated to chat
completions (llmroute.sidecar.upstream.responses_chat). The stream ends with `response.completed` (or
`.incomplete`): there is no `[DONE]`, so after it comes only the cost comment.
"""

from __future__ import annotations

import json
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.errors import ProxyError
from llmroute.sidecar.inbound.base import (
    Inbound,
    Parsed,
    estimate_tokens,
    has_part,
    has_role,
    invalid,
    output_limit,
    require_model,
    streams,
)

_ERROR_TYPES = {429: "rate_limit_error", 500: "server_error", 502: "server_error", 503: "server_error"}


def needed_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """tools when the request offers tools, vision for an input_image part, json for a JSON text format."""
    needs = {"tools"} if body.get("tools") else set()
    text = body.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    if isinstance(text_format, dict) and text_format.get("type") in ("json_schema", "json_object"):
        needs.add("json")
    if has_part(body.get("input"), "input_image"):
        needs.add("vision")
    return frozenset(needs)


class Responses(Inbound):
    api: Api = "responses"
    paths = ("/v1/responses", "/responses")
    shadow = {"model": "probe", "input": "ping", "max_output_tokens": 16, "store": False}

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        items = body.get("input")  # may be left out when a stored prompt or conversation supplies it
        if items is not None and (not isinstance(items, str | list) or not items):
            raise invalid("'input' must be a string or a non-empty array of input items")
        return Parsed(
            model=model,
            stream=streams(body),
            needs=needed_capabilities(body),
            tokens_in=estimate_tokens([body.get("instructions"), items]),
            tokens_out=output_limit(body, "max_output_tokens"),
        )

    def add_system(self, body: dict[str, Any], prompt: str) -> bool:
        if body.get("instructions") or has_role(body.get("input"), "system", "developer"):
            return False
        body["instructions"] = prompt
        return True

    def error_event(self, error: ProxyError, sequence: int = 0) -> bytes:
        """The Responses stream's `error` event. OpenAI nests the error under `error` (what the SDKs raise
        from); the flat `code`/`message`/`param` are what its documented event type reads."""
        kind = _ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "server_error")
        detail = {"type": kind, "code": error.code, "message": error.message, "param": None}
        event: dict[str, Any] = {"type": "error", "sequence_number": sequence}
        event.update({k: detail[k] for k in ("code", "message", "param")}, error=detail)
        return b"event: error\ndata: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


RESPONSES = Responses()
