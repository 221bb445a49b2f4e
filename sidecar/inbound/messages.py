"""POST /v1/messages: Anthropic's Messages API, JSON and SSE events, with Anthropic's error shape.

Natively served by `anthropic` backends: the body and the app's `anthropic-version` and `anthropic-beta`
headers go through as sent (cache_control, thinking blocks and all). The app's own key (`x-api-key` or
`Authorization`) never goes upstream on a routed model: the route's key does.
"""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound.base import Inbound, Parsed, estimate_tokens, invalid, require_model


def needed_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """tools when the request offers tools, vision when a message holds an image block."""
    needs = {"tools"} if body.get("tools") else set()
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "image" for b in content):
            needs.add("vision")
            break
    return frozenset(needs)


class Messages(Inbound):
    api: Api = "messages"
    family = "anthropic"
    paths = ("/v1/messages", "/messages")
    forward_headers = ("anthropic-version", "anthropic-beta")
    shadow = {"model": "probe", "max_tokens": 16, "messages": [{"role": "user", "content": "ping"}]}

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid("messages: field required (a non-empty array)")
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise invalid("max_tokens: field required (a positive integer)")
        return Parsed(
            model=model,
            stream=body.get("stream") is True,
            needs=needed_capabilities(body),
            tokens_in=estimate_tokens([body.get("system"), messages]),
            tokens_out=max_tokens,
        )


MESSAGES = Messages()


class CountTokens(Messages):
    """POST /v1/messages/count_tokens: a Messages request without max_tokens, counted, never run (served by
    llmroute.sidecar.count_tokens, not the dispatcher)."""

    paths = ("/v1/messages/count_tokens", "/messages/count_tokens")

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise invalid("messages: field required (a non-empty array)")
        return Parsed(model=model, stream=False, needs=frozenset(), tokens_in=0, tokens_out=0)


COUNT_TOKENS = CountTokens()
