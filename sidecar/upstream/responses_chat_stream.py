"""chat.completion.chunk events translated, as they arrive, into the Responses API's named stream events.

The sequence the SDKs expect: response.created, response.in_progress; per output item .output_item.added,
(.content_part.added, .output_text.delta..., .output_text.done, .content_part.done) or
(.function_call_arguments.delta..., .done), .output_item.done; and last response.completed (or
.incomplete) carrying the whole response with usage. Every event has its sequence_number.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from llmroute.sidecar.upstream.base import DONE, check_malformed, json_object
from llmroute.sidecar.upstream.errors import cut_short, error_from_event
from llmroute.sidecar.upstream.responses_object import (
    call_item,
    ids,
    member,
    message_item,
    reasoning_tokens,
    resource,
    status_of,
    text_part,
    usage_object,
)
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Usage

_DONE_EVENT = {"output_text": "response.output_text.done", "refusal": "response.refusal.done"}
_DELTA_EVENT = {"output_text": "response.output_text.delta", "refusal": "response.refusal.delta"}


@dataclass(slots=True)
class _Message:
    """The assistant message item being streamed: its content parts as (type, text so far)."""

    index: int
    id: str
    parts: list[tuple[str, list[str]]] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    """A function call item being streamed."""

    index: int
    number: int
    call_id: Any
    name: Any
    arguments: list[str] = field(default_factory=list)


class ChatToResponsesStream:
    """State of one translated stream: ids, open items, finished output, usage, the next sequence number."""

    __slots__ = (
        "_calls",
        "_created",
        "_done",
        "_events",
        "_finish",
        "_message",
        "_model",
        "_output",
        "_reasoning",
        "_request",
        "_stem",
        "_tier",
        "sequence",
        "settled",
        "skipped",
        "usage",
    )

    def __init__(self, request: dict[str, Any], model: str) -> None:
        self.usage = Usage()
        self.settled = False
        self.skipped = 0
        self.sequence = 0
        self._request = request
        self._model = model
        self._stem = ""
        self._created = int(time.time())
        self._tier: Any = None
        self._message: _Message | None = None
        self._calls: dict[Any, _Call] = {}  # chat tool_calls index -> open call item
        self._output: list[dict[str, Any]] = []  # finished items, in output order
        self._finish: Any = None
        self._reasoning = 0
        self._events = 0
        self._done = False

    def _emit(self, kind: str, payload: dict[str, Any]) -> bytes:
        event = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"

    def _resource(self, status: str, incomplete: dict[str, str] | None = None) -> dict[str, Any]:
        usage = usage_object(self.usage, self._reasoning)
        return resource(
            self._request,
            stem=self._stem,
            created=self._created,
            model=self._model,
            status=status,
            output=list(self._output),
            usage=usage,
            incomplete=incomplete,
            service_tier=self._tier,
        )

    def event(self, event: SSEEvent) -> list[bytes]:
        """Translate one chat chunk; raises UpstreamError for an error event or a first event that is not JSON."""
        if self._done:
            return []
        self._events += 1
        if event.data == b"[DONE]":
            return self._complete()
        chunk = json_object(event.data)
        if chunk is None:
            check_malformed(self._events)  # the first event must be a chunk; a later garbled one is skipped
            self.skipped += 1
            return []
        if chunk.get("error"):
            raise error_from_event(chunk["error"], "mid-stream")
        out: list[bytes] = []
        if self._events == 1:
            self._stem = ids(chunk.get("id"))
            self._model = str(chunk.get("model") or self._model)
            if isinstance(chunk.get("created"), int):
                self._created = chunk["created"]
            snapshot = self._resource("in_progress")
            out.append(self._emit("response.created", {"response": snapshot}))
            out.append(self._emit("response.in_progress", {"response": snapshot}))
        self._tier = chunk.get("service_tier") or self._tier
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage.from_openai(usage)
            self.settled = self._finish is not None  # chat's usage chunk follows its finish: only [DONE] is left
            self._reasoning = reasoning_tokens(usage)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = member(choice, "delta")
            for kind, key in (("output_text", "content"), ("refusal", "refusal")):
                if isinstance(delta.get(key), str) and delta[key]:
                    out.extend(self._text(kind, delta[key]))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.extend(self._call(call))
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
                out.extend(self._close_all())
        return out

    def _text(self, kind: str, piece: str) -> list[bytes]:
        """A text or refusal delta, opening the message item and the content part as needed."""
        out: list[bytes] = []
        message = self._message
        if message is None:
            out.extend(self._close_all())
            index = len(self._output)
            message = self._message = _Message(index, f"msg_{self._stem}" + (f"_{index}" if index else ""))
            item = {"type": "message", "id": message.id, "status": "in_progress", "role": "assistant", "content": []}
            out.append(self._emit("response.output_item.added", {"output_index": index, "item": item}))
        if not message.parts or message.parts[-1][0] != kind:
            message.parts.append((kind, []))
            empty = text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            out.append(self._emit("response.content_part.added", {**self._where(message), "part": empty}))
        message.parts[-1][1].append(piece)
        out.append(self._emit(_DELTA_EVENT[kind], {**self._where(message), "delta": piece, **_logprobs(kind)}))
        return out

    @staticmethod
    def _where(message: _Message) -> dict[str, Any]:
        return {"item_id": message.id, "output_index": message.index, "content_index": len(message.parts) - 1}

    def _call(self, delta: dict[str, Any]) -> list[bytes]:
        """A tool call delta: a new call opens a function_call item, argument pieces stream into it."""
        out: list[bytes] = []
        call = self._calls.get(delta.get("index"))
        function = member(delta, "function")
        if call is None:
            out.extend(self._close_message())
            index = len(self._output) + len(self._calls)
            call = _Call(index, len(self._calls), delta.get("id"), function.get("name"))
            self._calls[delta.get("index")] = call
            item = call_item(self._stem, call.number, call.call_id, call.name, "", "in_progress")
            out.append(self._emit("response.output_item.added", {"output_index": index, "item": item}))
        piece = function.get("arguments")
        if isinstance(piece, str) and piece:
            call.arguments.append(piece)
            item_id = f"fc_{self._stem}_{call.number}"
            payload = {"item_id": item_id, "output_index": call.index, "delta": piece}
            out.append(self._emit("response.function_call_arguments.delta", payload))
        return out

    def _item_status(self) -> str:
        return status_of(self._finish)[0] if self._finish else "completed"

    def _close_message(self) -> list[bytes]:
        message = self._message
        if message is None:
            return []
        out = []
        item_id = message.id
        text, refusal = "", None
        for number, (kind, pieces) in enumerate(message.parts):
            value = "".join(pieces)
            where = {"item_id": item_id, "output_index": message.index, "content_index": number}
            if kind == "output_text":
                text += value
                out.append(self._emit(_DONE_EVENT[kind], {**where, "text": value, "logprobs": []}))
                part: dict[str, Any] = text_part(value)
            else:
                refusal = (refusal or "") + value
                out.append(self._emit(_DONE_EVENT[kind], {**where, "refusal": value}))
                part = {"type": "refusal", "refusal": value}
            out.append(self._emit("response.content_part.done", {**where, "part": part}))
        item = message_item(self._stem, text, refusal, self._item_status())
        item["id"] = item_id
        out.append(self._emit("response.output_item.done", {"output_index": message.index, "item": item}))
        self._output.append(item)
        self._message = None
        return out

    def _close_all(self) -> list[bytes]:
        """Finish the open message and every open call, in output order."""
        out = self._close_message()
        for call in sorted(self._calls.values(), key=lambda c: c.index):
            arguments = "".join(call.arguments)
            item = call_item(self._stem, call.number, call.call_id, call.name, arguments, self._item_status())
            where = {"item_id": item["id"], "output_index": call.index}
            out.append(self._emit("response.function_call_arguments.done", {**where, "arguments": arguments}))
            out.append(self._emit("response.output_item.done", {"output_index": call.index, "item": item}))
            self._output.append(item)
        self._calls.clear()
        return out

    def _complete(self) -> list[bytes]:
        """The final event: response.completed, or .incomplete when the answer hit a limit or a filter."""
        out = self._close_all()
        status, incomplete = status_of(self._finish)
        out.append(self._emit(f"response.{status}", {"response": self._resource(status, incomplete)}))
        self._done = True
        out.append(DONE)
        return out

    def end(self) -> list[bytes]:
        """At EOF: the final event if chat's finish_reason came (without [DONE]); else the stream was cut short."""
        if self._done:
            return []
        if self._finish is None:
            raise cut_short(self._events, "the finish_reason")
        return self._complete()


def _logprobs(kind: str) -> dict[str, Any]:
    return {"logprobs": []} if kind == "output_text" else {}
