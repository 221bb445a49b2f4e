"""POST /v1/chat/completions: OpenAI chat completions, JSON and SSE."""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound.base import (
    CHARS_PER_TOKEN,
    Inbound,
    Parsed,
    has_role,
    invalid,
    output_limit,
    require_model,
    streams,
)
from llmroute.sidecar.upstream.base import DONE

_CAPABILITY_FIELDS = frozenset({"n", "logprobs", "top_logprobs", "tools", "functions", "response_format"})


def needed_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """What a backend must support to serve this request: tools, vision (image parts), json, and the wire
    features n>1 and logprobs (see Backend.serves)."""
    needs = set()
    if not _CAPABILITY_FIELDS.isdisjoint(body):  # most requests set none of them: one check, not six
        if isinstance(body.get("n"), int) and body["n"] > 1:
            needs.add("n>1")
        if body.get("logprobs") or body.get("top_logprobs"):
            needs.add("logprobs")
        if body.get("tools") or body.get("functions"):
            needs.add("tools")
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
            needs.add("json")
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("type") == "image_url" for part in content
        ):
            needs.add("vision")
            break
    return frozenset(needs)


class Chat(Inbound):
    api: Api = "chat"
    paths = ("/v1/chat/completions", "/chat/completions")
    shadow = {"model": "probe", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 16}
    done = DONE

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid("'messages' is required and must be a non-empty array")
        chars = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        return Parsed(
            model=model,
            stream=streams(body),
            needs=needed_capabilities(body),
            tokens_in=max(chars // CHARS_PER_TOKEN, 1),
            tokens_out=output_limit(body, "max_completion_tokens", "max_tokens"),
        )

    def add_system(self, body: dict[str, Any], prompt: str) -> bool:
        if has_role(body["messages"], "system", "developer"):
            return False
        body["messages"] = [{"role": "system", "content": prompt}, *body["messages"]]
        return True


CHAT = Chat()
