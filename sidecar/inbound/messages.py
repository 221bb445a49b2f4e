"""POST /v1/messages: Anthropic's Messages API, JSON and SSE events, with Anthropic's error shape.

Natively served by `anthropic` backends: the body and the app's `anthropic-version` and `anthropic-beta`
headers go through as sent (cache_control, thinking blocks and all). The app's own key (`x-api-key` or
`Authorization`) never goes upstream on a routed model: the route's key does.
"""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound.base import Inbound, Parsed, estimate_tokens, invalid, require_model, streams


def _is_image(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "image"


def _has_image(blocks: Any) -> bool:
    """Whether content blocks hold an image, directly or in a tool result's content."""
    if not isinstance(blocks, list):
        return False
    for block in blocks:
        inner = block.get("content") if isinstance(block, dict) and block.get("type") == "tool_result" else None
        if _is_image(block) or (isinstance(inner, list) and any(_is_image(b) for b in inner)):
            return True
    return False


def needed_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """tools when the request offers tools, vision when a message holds an image (or a tool result does)."""
    needs = {"tools"} if body.get("tools") else set()
    for message in body.get("messages") or ():
        if isinstance(message, dict) and _has_image(message.get("content")):
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
            stream=streams(body),
            needs=needed_capabilities(body),
            tokens_in=estimate_tokens([body.get("system"), messages]),
            tokens_out=max_tokens,
        )

    def add_system(self, body: dict[str, Any], prompt: str) -> bool:
        if body.get("system"):
            return False
        body["system"] = prompt
        return True


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
