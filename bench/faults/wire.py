"""The fault provider's wire formats, one per API it serves: OpenAI chat completions, Anthropic Messages and
OpenAI Responses. Each says how a request reads (its prompt, a prefill, whether it streams), how the healthy
answer is written (JSON, or the stream's events), and each scripted error in that API's own shape, so a
router or SDK in front of the provider sees what the real provider's network would send."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol

ErrorKind = Literal["rate_limit", "server_error", "context_length", "content_filter", "prefill_rejected"]
Usage = tuple[int, int]
"""(input tokens, output tokens) as the provider counts them."""
APP_MAX_TOKENS = 1024
"""The `max_tokens` the Messages app sends (the API requires one); a router's probe asks for fewer."""


def count_usage(prompt: str, text: str) -> Usage:
    """Tokens as every fault provider counts them: a word of output is a token, a prompt 4 characters."""
    return len(prompt) // 4 + 3, len(text.split())


class Stream(Protocol):
    """One streamed answer's events, in the order the provider writes them."""

    def opening(self) -> bytes: ...
    def delta(self, word: str) -> bytes: ...
    def garbled(self) -> bytes: ...
    def finish(self) -> bytes:
        """The events that end the answer: its finish reason and usage."""
        ...

    def terminator(self) -> bytes:
        """The end-of-stream marker after the finish (b"" where the end of the body is the marker)."""
        ...


class Wire(Protocol):
    name: str
    path: str
    """The request path's ending this API is served at."""

    def prompt(self, request: Mapping[str, Any]) -> tuple[str, str | None]:
        """The prompt's text (what input tokens are counted from) and the assistant prefill, if any."""
        ...

    def probe(self, request: Mapping[str, Any]) -> bool:
        """Whether the request is a router's own probe rather than the app's (it limits output tokens)."""
        ...

    def wants_usage(self, request: Mapping[str, Any]) -> bool: ...
    def bad_prefill(self, prefix: str) -> dict[str, Any] | None:
        """The 400 body the real API answers this prefill with, None when it takes it."""
        ...

    def error(self, kind: ErrorKind, status: int) -> dict[str, Any]: ...
    def reason(self, kind: ErrorKind) -> str: ...
    def answer(self, answer_id: str, model: str, text: str, usage: Usage) -> dict[str, Any]: ...
    def stream(self, answer_id: str, model: str, text: str, usage: Usage | None) -> Stream: ...


def _sse(data: Mapping[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + json.dumps(data).encode() + b"\n\n"


def _text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _last_assistant(messages: Any) -> str | None:
    last = messages[-1] if isinstance(messages, list) and messages else None
    return _text_of(last.get("content")) if isinstance(last, dict) and last.get("role") == "assistant" else None


_OPENAI_ERRORS: dict[ErrorKind, dict[str, Any]] = {
    "rate_limit": {"message": "Rate limit reached for requests.", "type": "requests", "code": "rate_limit_exceeded"},
    "server_error": {"message": "The server had an error processing your request.", "type": "server_error"},
    "context_length": {
        "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9120 "
        "tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    },
    "content_filter": {
        "message": "The response was filtered due to the prompt triggering the content management policy.",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "content_filter",
    },
    "prefill_rejected": {
        "message": "assistant prefill is not supported by this model",
        "type": "invalid_request_error",
        "code": "unsupported_prefill",
    },
}


class _OpenAIShape:
    """OpenAI's APIs: errors as `{"error": {message, type, param, code}}`, any prefill taken."""

    errors = _OPENAI_ERRORS

    def bad_prefill(self, prefix: str) -> None:
        return None

    def error(self, kind: ErrorKind, status: int) -> dict[str, Any]:
        return {"error": self.errors[kind]}

    def reason(self, kind: ErrorKind) -> str:
        return str(self.errors[kind]["message"])


class Chat(_OpenAIShape):
    """OpenAI chat completions: `data:` chunks, usage in a last chunk when asked, then `data: [DONE]`."""

    name = "chat"
    path = "/chat/completions"

    def prompt(self, request: Mapping[str, Any]) -> tuple[str, str | None]:
        messages = request.get("messages") or []
        return "".join(_text_of(m.get("content")) for m in messages), _last_assistant(messages)

    def probe(self, request: Mapping[str, Any]) -> bool:
        return request.get("max_tokens") is not None

    def wants_usage(self, request: Mapping[str, Any]) -> bool:
        return bool((request.get("stream_options") or {}).get("include_usage"))

    def answer(self, answer_id: str, model: str, text: str, usage: Usage) -> dict[str, Any]:
        return {
            "id": answer_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": chat_usage(usage),
        }

    def stream(self, answer_id: str, model: str, text: str, usage: Usage | None) -> Stream:
        return _ChatStream(answer_id, model, usage)


def chat_usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


class _ChatStream:
    def __init__(self, answer_id: str, model: str, usage: Usage | None) -> None:
        self._head = {"id": answer_id, "object": "chat.completion.chunk", "model": model}
        self._usage = usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**self._head, "created": int(time.time()), "choices": [choice]})

    def opening(self) -> bytes:
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, word: str) -> bytes:
        return self._chunk({"content": word})

    def garbled(self) -> bytes:
        return b'data: {"id": "' + str(self._head["id"]).encode() + b'", "choices": [{"delta": {"cont\n\n'

    def finish(self) -> bytes:
        end = self._chunk({}, "stop")
        if self._usage is not None:
            end += _sse({**self._head, "choices": [], "usage": chat_usage(self._usage)})
        return end

    def terminator(self) -> bytes:
        return b"data: [DONE]\n\n"


_ANTHROPIC_ERRORS: dict[ErrorKind, tuple[str, str]] = {
    "rate_limit": ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    "server_error": ("api_error", "Internal server error"),
    "context_length": ("invalid_request_error", "prompt is too long: 9120 tokens > 8192 maximum"),
    "content_filter": ("invalid_request_error", "Output blocked by content filtering policy"),
    "prefill_rejected": ("invalid_request_error", "This model does not support assistant message prefill."),
}


class Messages:
    """Anthropic Messages: named events from `message_start` to `message_stop`; usage in `message_start`
    (input) and `message_delta` (output). Like the real API, a prefill may not end in whitespace."""

    name = "messages"
    path = "/messages"

    def prompt(self, request: Mapping[str, Any]) -> tuple[str, str | None]:
        messages = request.get("messages") or []
        system = _text_of(request.get("system"))
        return system + "".join(_text_of(m.get("content")) for m in messages), _last_assistant(messages)

    def probe(self, request: Mapping[str, Any]) -> bool:
        return request.get("max_tokens") != APP_MAX_TOKENS

    def wants_usage(self, request: Mapping[str, Any]) -> bool:
        return True

    def bad_prefill(self, prefix: str) -> dict[str, Any] | None:
        if prefix == prefix.rstrip():
            return None
        message = "messages: final assistant content cannot end with trailing whitespace"
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}

    def error(self, kind: ErrorKind, status: int) -> dict[str, Any]:
        etype, message = _ANTHROPIC_ERRORS[kind]
        if kind == "server_error" and status == 503:
            etype = "overloaded_error"
        return {"type": "error", "error": {"type": etype, "message": message}}

    def reason(self, kind: ErrorKind) -> str:
        return _ANTHROPIC_ERRORS[kind][1]

    def answer(self, answer_id: str, model: str, text: str, usage: Usage) -> dict[str, Any]:
        return {
            "id": answer_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "text", "text": text}],
            "model": model,
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        }

    def stream(self, answer_id: str, model: str, text: str, usage: Usage | None) -> Stream:
        return _MessagesStream(answer_id, model, usage or (0, 0))


class _MessagesStream:
    def __init__(self, answer_id: str, model: str, usage: Usage) -> None:
        self._id, self._model, self._usage = answer_id, model, usage

    def opening(self) -> bytes:
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._usage[0], "output_tokens": 1},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return (
            _sse({"type": "message_start", "message": message}, "message_start")
            + _sse(block, "content_block_start")
            + _sse({"type": "ping"}, "ping")
        )

    def delta(self, word: str) -> bytes:
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word}}
        return _sse(delta, "content_block_delta")

    def garbled(self) -> bytes:
        return b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"ty\n\n'

    def finish(self) -> bytes:
        delta = {"stop_reason": "end_turn", "stop_sequence": None}
        usage = {"output_tokens": self._usage[1]}
        return _sse({"type": "content_block_stop", "index": 0}, "content_block_stop") + _sse(
            {"type": "message_delta", "delta": delta, "usage": usage}, "message_delta"
        )

    def terminator(self) -> bytes:
        return _sse({"type": "message_stop"}, "message_stop")


_RESPONSES_ERRORS: dict[ErrorKind, dict[str, Any]] = {
    **_OPENAI_ERRORS,
    "context_length": {
        "message": "Your input exceeds the context window of this model. Please adjust your input and try again.",
        "type": "invalid_request_error",
        "param": "input",
        "code": "context_length_exceeded",
    },
    "content_filter": {
        "message": "Invalid prompt: your prompt was flagged as potentially violating our usage policy. Please try "
        "again with a different prompt.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_prompt",
    },
}


class Responses(_OpenAIShape):
    """OpenAI Responses: named events numbered by `sequence_number`, from `response.created` to
    `response.completed` (with the output and usage); no `[DONE]`: the body's end closes the stream."""

    name = "responses"
    path = "/responses"
    errors = _RESPONSES_ERRORS

    def prompt(self, request: Mapping[str, Any]) -> tuple[str, str | None]:
        items = request.get("input")
        text = items if isinstance(items, str) else "".join(_text_of(i.get("content")) for i in items or [])
        return _text_of(request.get("instructions")) + text, None  # the API has no way to ask for a prefill

    def probe(self, request: Mapping[str, Any]) -> bool:
        return request.get("max_output_tokens") is not None

    def wants_usage(self, request: Mapping[str, Any]) -> bool:
        return True

    def answer(self, answer_id: str, model: str, text: str, usage: Usage) -> dict[str, Any]:
        return _response(answer_id, model, "completed", text, usage)

    def stream(self, answer_id: str, model: str, text: str, usage: Usage | None) -> Stream:
        return _ResponsesStream(answer_id, model, text, usage or (0, 0))


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def _item(answer_id: str, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_part(text)]
    return {"type": "message", "id": f"msg_{answer_id}", "status": status, "role": "assistant", "content": content}


def _response(answer_id: str, model: str, status: str, text: str | None, usage: Usage | None) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": model,
        "output": [] if text is None else [_item(answer_id, status, text)],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": None
        if usage is None
        else {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": sum(usage),
        },
    }


class _ResponsesStream:
    def __init__(self, answer_id: str, model: str, text: str, usage: Usage) -> None:
        self._id, self._model, self._text, self._usage = answer_id, model, text, usage
        self._number = 0
        self._where = {"item_id": f"msg_{answer_id}", "output_index": 0, "content_index": 0}

    def _event(self, kind: str, payload: Mapping[str, Any]) -> bytes:
        self._number += 1
        return _sse({"type": kind, "sequence_number": self._number - 1, **payload}, kind)

    def opening(self) -> bytes:
        snapshot = _response(self._id, self._model, "in_progress", None, None)
        return (
            self._event("response.created", {"response": snapshot})
            + self._event("response.in_progress", {"response": snapshot})
            + self._event(
                "response.output_item.added", {"output_index": 0, "item": _item(self._id, "in_progress", None)}
            )
            + self._event("response.content_part.added", {**self._where, "part": _part("")})
        )

    def delta(self, word: str) -> bytes:
        return self._event("response.output_text.delta", {**self._where, "delta": word})

    def garbled(self) -> bytes:
        self._number += 1
        return b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "de\n\n'

    def finish(self) -> bytes:
        done = _response(self._id, self._model, "completed", self._text, self._usage)
        return (
            self._event("response.output_text.done", {**self._where, "text": self._text})
            + self._event("response.content_part.done", {**self._where, "part": _part(self._text)})
            + self._event(
                "response.output_item.done", {"output_index": 0, "item": _item(self._id, "completed", self._text)}
            )
            + self._event("response.completed", {"response": done})
        )

    def terminator(self) -> bytes:
        return b""


WIRES: dict[str, Wire] = {w.name: w for w in (Chat(), Messages(), Responses())}
"""The provider's wire formats by API name (also the app's inbound API of the same name)."""
