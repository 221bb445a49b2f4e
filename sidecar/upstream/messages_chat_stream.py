"""OpenAI chat.completion.chunk events translated, as they arrive, into Anthropic Messages stream events.

message_start comes with the first chunk; text and each tool call become content blocks (text_delta,
input_json_delta); message_delta (stop_reason, usage) and message_stop come when the upstream has sent
its usage and `[DONE]`, since chat reports usage only at the very end.
"""

from __future__ import annotations

import json
from typing import Any

from llmroute.sidecar.upstream.base import DONE, check_malformed, json_object
from llmroute.sidecar.upstream.errors import bad_body, cut_short, error_from_event
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Usage

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
_STOP["content_filter"] = "refusal"


def stop_reason(finish_reason: Any) -> str:
    """Anthropic's stop_reason for a chat finish_reason. Chat says "stop" for a stop sequence too, so that
    case is end_turn with stop_sequence null."""
    return _STOP.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"


def message_usage(usage: Usage) -> dict[str, Any]:
    """A Messages `usage` for chat's counts: Anthropic's input_tokens excludes cache reads; chat reports no
    cache writes."""
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation": None,
        "inference_geo": None,
        "output_tokens_details": None,
        "server_tool_use": None,
        "service_tier": None,
    }


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One named SSE event, as Anthropic sends them."""
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


class ChatToMessagesStream:
    """State of one translated stream: the open content block, tool calls by chat index, stop reason, usage."""

    __slots__ = ("_blocks", "_done", "_events", "_model", "_open", "_stop", "_tools", "settled", "skipped", "usage")

    def __init__(self, model: str) -> None:
        self.usage = Usage()
        self.settled = False
        """The finish_reason and the usage are in: only [DONE] is left (see StreamTranslator)."""
        self.skipped = 0
        self._model = model
        self._events = 0
        self._blocks = 0  # content blocks started so far
        self._open: str | None = None  # "text" or "tool_use": the block deltas go to now
        self._tools: dict[Any, int] = {}  # chat tool_calls index -> content block index
        self._stop: str | None = None  # set once a finish_reason came
        self._done = False

    def event(self, sse: SSEEvent) -> list[bytes]:
        """Translate one chat chunk; raises UpstreamError for an error chunk or one that is not JSON."""
        if self._done:
            return []
        self._events += 1
        if sse.data == b"[DONE]":
            if self._events == 1:
                raise bad_body(200, "the event stream ended before any chunk")
            return self._finish()
        chunk = json_object(sse.data)
        if chunk is None:  # fatal as the first event; later, one garbled chunk is skipped and counted
            check_malformed(self._events)
            self.skipped += 1
            return []
        if chunk.get("error"):
            raise error_from_event(chunk["error"], "mid-stream")
        out: list[bytes] = []
        if self._events == 1:
            out.append(self._start(chunk))
        has_usage = bool(chunk.get("usage"))
        if has_usage:
            self.usage = Usage.from_openai(chunk["usage"])
            self.settled = self._stop is not None
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None:
            return out
        delta: dict[str, Any] = choice["delta"] if isinstance(choice.get("delta"), dict) else {}
        text = delta.get("content") or delta.get("refusal")
        if isinstance(text, str) and text:
            if self._open != "text":
                out.extend(self._begin("text", {"type": "text", "text": "", "citations": None}))
            out.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or ():
            out.extend(self._tool_call(call))
        if delta.get("refusal"):
            self._stop = "refusal"
        if choice.get("finish_reason"):
            out.extend(self._close())
            self._stop = "refusal" if self._stop == "refusal" else stop_reason(choice["finish_reason"])
            self.settled = has_usage  # usage in the finishing chunk itself
        return out

    def end(self) -> list[bytes]:
        """At upstream EOF: the closing events if a finish_reason came (servers that omit [DONE]); otherwise
        the stream was cut short."""
        if self._done:
            return []
        if self._stop is not None:
            return self._finish()
        raise cut_short(self._events, "a finish_reason")

    def _start(self, chunk: dict[str, Any]) -> bytes:
        message: dict[str, Any] = {
            "id": chunk.get("id") or "",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": chunk.get("model") or self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
            "usage": message_usage(Usage()),  # chat reports usage only at the end: see message_delta
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _tool_call(self, call: Any) -> list[bytes]:
        if not isinstance(call, dict):
            return []
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
        out: list[bytes] = []
        index = call.get("index", 0)
        if index not in self._tools:
            # caller "direct": what Anthropic says of a call the model made itself
            block: dict[str, Any] = {"type": "tool_use", "id": call.get("id"), "name": function.get("name")}
            block |= {"input": {}, "caller": {"type": "direct"}}
            out.extend(self._begin("tool_use", block))
            self._tools[index] = self._blocks - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(
                event(
                    "content_block_delta", {"type": "content_block_delta", "index": self._tools[index], "delta": delta}
                )
            )
        return out

    def _begin(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        start = {"type": "content_block_start", "index": self._blocks, "content_block": block}
        self._blocks += 1
        self._open = kind
        out.append(event("content_block_start", start))
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": self._blocks - 1, "delta": delta})

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})]

    def _finish(self) -> list[bytes]:
        self._done = True
        usage = message_usage(self.usage)
        for name in ("cache_creation", "inference_geo", "service_tier"):
            del usage[name]
        delta = {
            "stop_reason": self._stop or "end_turn",
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
        }
        return [
            *self._close(),
            event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            event("message_stop", {"type": "message_stop"}),
            DONE,
        ]
