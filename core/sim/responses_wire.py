"""OpenAI's Responses API format: a `response` object, or its named SSE events ending in response.completed
(response.incomplete when max_output_tokens cut the answer), every event numbered by sequence_number."""

from __future__ import annotations

import json
from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, dump, max_tokens
from llmroute.sim.openai_common import body_and_model, text

_OPEN_STREAMS = 10_000
"""Event counters kept for streams still running; beyond this the oldest go (streams dropped mid-way)."""


class ResponsesFormat:
    """POST .../responses."""

    id_prefix = "resp_"
    generates = True
    numbered = True
    """Each event carries the next sequence_number, so the simulator makes every token event afresh."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}  # response id -> next sequence_number

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        checked = body_and_model(request, payload)
        if isinstance(checked, str):
            return checked
        payload, model = checked
        if not isinstance(payload.get("input"), str | list) or not payload["input"]:
            return "'input' must be a string or a non-empty array of input items"
        limit = max_tokens(payload, "max_output_tokens")
        if isinstance(limit, str):
            return limit
        return ChatRequest(model, payload.get("stream") is True, limit, include_usage=True)

    def completion_body(self, completion: Completion) -> bytes:
        return dump(_response(completion, "completed" if not completion.truncated else "incomplete", full=True))

    def stream_start(self, completion: Completion) -> bytes:
        if len(self._next) >= _OPEN_STREAMS:
            del self._next[next(iter(self._next))]
        self._next[completion.id] = 0
        snapshot = _response(completion, "in_progress", full=False)
        item = {**_message(completion, "", "in_progress"), "content": []}
        return b"".join(
            (
                self._event(completion, "response.created", {"response": snapshot}),
                self._event(completion, "response.in_progress", {"response": snapshot}),
                self._event(completion, "response.output_item.added", {"output_index": 0, "item": item}),
                self._event(completion, "response.content_part.added", {**_where(completion), "part": _part("")}),
            )
        )

    def stream_token(self, completion: Completion, text: str) -> bytes:
        payload = {**_where(completion), "delta": text, "logprobs": []}
        return self._event(completion, "response.output_text.delta", payload)

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        status = "incomplete" if completion.truncated else "completed"
        full = text(completion.completion_tokens)
        where = _where(completion)
        item = _message(completion, full, status)
        events = (
            self._event(completion, "response.output_text.done", {**where, "text": full, "logprobs": []}),
            self._event(completion, "response.content_part.done", {**where, "part": _part(full)}),
            self._event(completion, "response.output_item.done", {"output_index": 0, "item": item}),
            self._event(completion, f"response.{status}", {"response": _response(completion, status, full=True)}),
        )
        self._next.pop(completion.id, None)
        return b"".join(events)

    def stream_error(self, message: str) -> bytes | None:
        # The simulator fails a stream right after its first token, whose event was number 4.
        error = {"type": "server_error", "code": "server_error", "message": message, "param": None}
        event = {"type": "error", "sequence_number": 5, **{k: error[k] for k in ("code", "message", "param")}}
        return b"event: error\ndata: " + dump({**event, "error": error}) + b"\n\n"

    def _event(self, completion: Completion, kind: str, payload: dict[str, Any]) -> bytes:
        number = self._next.get(completion.id, 0)
        self._next[completion.id] = number + 1
        event = {"type": kind, "sequence_number": number, **payload}
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _where(completion: Completion) -> dict[str, Any]:
    return {"item_id": _item_id(completion), "output_index": 0, "content_index": 0}


def _item_id(completion: Completion) -> str:
    return "msg_" + completion.id


def _part(value: str) -> dict[str, Any]:
    return {"type": "output_text", "text": value, "annotations": [], "logprobs": []}


def _message(completion: Completion, value: str, status: str) -> dict[str, Any]:
    item_id = _item_id(completion)
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [_part(value)]}


def _response(completion: Completion, status: str, *, full: bool) -> dict[str, Any]:
    """The response object; `full` adds the output and usage of a finished answer."""
    usage = {
        "input_tokens": completion.prompt_tokens,
        "input_tokens_details": {"cached_tokens": completion.cached_tokens},
        "output_tokens": completion.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }
    done = status in ("completed", "incomplete")
    return {
        "id": completion.id,
        "object": "response",
        "created_at": completion.created,
        "completed_at": completion.created if status == "completed" else None,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "model": completion.model,
        "previous_response_id": None,
        "instructions": None,
        "output": [_message(completion, text(completion.completion_tokens), status)] if full else [],
        "error": None,
        "tools": [],
        "tool_choice": "auto",
        "truncation": "disabled",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_logprobs": 0,
        "temperature": 1.0,
        "reasoning": {"effort": None, "summary": None},
        "usage": usage if done else None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "store": False,
        "background": False,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }


RESPONSES = ResponsesFormat()
