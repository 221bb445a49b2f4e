"""Anthropic Messages stream events translated, as they arrive, into OpenAI chat.completion.chunk events."""

from __future__ import annotations

import time
from typing import Any

from llmroute.sidecar.upstream.base import DONE, check_malformed, json_object, sse
from llmroute.sidecar.upstream.errors import cut_short, error_from_event
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Usage

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_reason(stop_reason: Any) -> str | None:
    """OpenAI's finish_reason for an Anthropic stop_reason."""
    return None if stop_reason is None else _FINISH.get(stop_reason, "stop")


def usage_of(usage: Any, into: Usage | None = None) -> Usage:
    """Anthropic usage as OpenAI counts it: prompt tokens include cache reads and cache writes.

    Fields absent from `usage` keep their value in `into` (message_delta repeats only what changed).
    """
    result = into if into is not None else Usage()
    if not isinstance(usage, dict):
        return result
    fields = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    if any(f in usage for f in fields):
        counts = [usage.get(f) for f in fields]
        uncached, cached, written = (c if isinstance(c, int) else 0 for c in counts)
        result.prompt_tokens = uncached + cached + written
        result.cached_tokens = cached
        result.cache_write_tokens = written
    if isinstance(usage.get("output_tokens"), int):
        result.completion_tokens = usage["output_tokens"]
    return result


class AnthropicStream:
    """State of one translated stream: message id and model, tool-call indexes, usage, whether it ended."""

    __slots__ = (
        "_created",
        "_done",
        "_events",
        "_forward_usage",
        "_id",
        "_model",
        "_tools",
        "settled",
        "skipped",
        "usage",
    )

    def __init__(self, model: str, *, forward_usage: bool) -> None:
        self.usage = Usage()
        self.settled = False
        self.skipped = 0
        self._model = model
        self._forward_usage = forward_usage
        self._id = ""
        self._created = int(time.time())
        self._tools: dict[Any, int] = {}  # content block index -> OpenAI tool_calls index
        self._events = 0
        self._done = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse(self._envelope([choice]))

    def _envelope(self, choices: list[Any]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }

    def event(self, event: SSEEvent) -> list[bytes]:
        """Translate one Messages event; raises UpstreamError for an `error` event."""
        if self._done:
            return []
        self._events += 1
        doc = json_object(event.data)
        if doc is None:
            check_malformed(self._events)
            self.skipped += 1
            return []
        kind = doc.get("type") or event.event
        if kind == "content_block_delta":
            return self._delta(doc)
        if kind == "message_start":
            message = doc.get("message") or {}
            self._id = message.get("id") or self._id
            self._model = message.get("model") or self._model
            usage_of(message.get("usage"), self.usage)
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = doc.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tools.setdefault(doc.get("index"), len(self._tools))
                call = {"index": index, "id": block.get("id"), "type": "function"}
                call["function"] = {"name": block.get("name"), "arguments": ""}
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "message_delta":
            usage_of(doc.get("usage"), self.usage)
            self.settled = True  # the stop reason and final usage: only message_stop is left
            stop = (doc.get("delta") or {}).get("stop_reason")
            return [self._chunk({}, finish_reason(stop) or "stop")]
        if kind == "message_stop":
            self._done = True
            return self._closing()
        if kind == "error":
            raise error_from_event(doc.get("error"), "mid-stream")
        return []  # ping, content_block_stop, and event types added after this was written

    def _closing(self) -> list[bytes]:
        """The usage chunk (when the app asked for it) and the end."""
        if self._forward_usage:
            usage = self._envelope([])
            usage["usage"] = self.usage.to_openai()
            return [sse(usage), DONE]
        return [DONE]

    def _delta(self, doc: dict[str, Any]) -> list[bytes]:
        delta = doc.get("delta") or {}
        if delta.get("type") == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if delta.get("type") == "input_json_delta":
            index = self._tools.get(doc.get("index"))
            if index is None:
                return []
            call = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
            return [self._chunk({"tool_calls": [call]})]
        return []  # thinking and signature deltas have no chat.completions counterpart

    def end(self) -> list[bytes]:
        """Nothing if message_stop came; its closing events if only message_stop was missing; otherwise the
        stream was cut short."""
        if self._done:
            return []
        if self.settled:
            self._done = True
            return self._closing()
        raise cut_short(self._events, "message_stop")
