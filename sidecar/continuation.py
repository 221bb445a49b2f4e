"""Resuming a stream that broke off mid-answer, on a backend that can continue a partial answer.

A backend that declares `capabilities: [prefill]` accepts an assistant message last and continues it:
Anthropic natively (the chat translation makes it the prefill), DeepSeek and Mistral with `prefix: true`
on that message, vLLM (`selfHosted`) with `continue_final_message`. When the stream the app is reading
dies or goes silent, the sidecar asks such a backend to continue from the text already sent and splices
its events into the app's stream, so the app receives one whole answer.

Chat streams and Anthropic Messages streams are continued (a Messages prefill goes only to backends that
serve Messages natively: the translation to chat does not carry one). Responses streams are not: OpenAI's
Responses API has no way to continue a partial answer, so they end with the API's `error` event. Only text
can be continued: a stream that was calling tools or thinking ends with the interruption instead.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llmroute.model import Backend
from llmroute.sidecar.balancer.candidates import Candidate
from llmroute.sidecar.dispatch import Answer, Call, Dispatcher
from llmroute.sidecar.inbound.base import CHARS_PER_TOKEN
from llmroute.sidecar.upstream.errors import UpstreamError

PREFILL = "prefill"


class _Splice:
    """What the app has been sent of one stream in its API's events, and how to write a continuation's
    events into it. One subclass per API that can be continued."""

    def __init__(self) -> None:
        self.text: list[str] = []
        """The answer's text the app has received so far."""
        self.stuck = False
        """Something other than text was sent (tool calls, thinking): no continuation can carry it on."""
        self.before = 0
        """Tokens (estimated) the app had received when the stream was resumed: added to the final usage."""
        self.resumed = False

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any] | None:
        """The request asking `backend` to continue `text`; None when this request cannot be continued."""
        raise NotImplementedError

    def relay(self, data: bytes) -> bytes:
        """Note what `data` (whole SSE events) tells the app; after a resume, the events rewritten into the
        original stream."""
        raise NotImplementedError


class _ChatSplice(_Splice):
    """Chat completion chunks: after a resume, the continuation's chunks under the original id and model,
    without its second role chunk."""

    def __init__(self) -> None:
        super().__init__()
        self._id: Any = None
        self._model: Any = None

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any]:
        """The chat request that asks `backend` to continue `text`, in the way its provider takes a prefill."""
        final: dict[str, Any] = {"role": "assistant", "content": text}
        request = {**body, "messages": [*body["messages"], final]}
        if backend.provider == "anthropic":
            final["content"] = text.rstrip()  # Anthropic refuses a prefill ending in white space
        elif backend.self_hosted:
            request["continue_final_message"] = True  # vLLM
            request["add_generation_prompt"] = False
        else:
            final["prefix"] = True  # DeepSeek, Mistral
        return request

    def relay(self, data: bytes) -> bytes:
        if not data:
            return data
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event.startswith(b"data: {"):
                if event:
                    out.append(event + b"\n\n")
                continue
            chunk = json.loads(event[6:])
            choices = chunk.get("choices") or []
            delta = (choices[0].get("delta") or {}) if choices else {}
            if self._id is None:
                self._id, self._model = chunk.get("id"), chunk.get("model")
            if delta.get("tool_calls"):
                self.stuck = True
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            if not self.resumed:
                out.append(event + b"\n\n")
                continue
            opening = set(delta) <= {"role", "content"} and not delta.get("content")
            if choices and opening and not choices[0].get("finish_reason"):
                continue  # the continuation's own opening: the app already has one
            chunk["id"], chunk["model"] = self._id, self._model
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage["completion_tokens"] += self.before
                usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage["completion_tokens"]
            out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        return b"".join(out)


class _MessagesSplice(_Splice):
    """Anthropic Messages events. After a resume the continuation's message_start is dropped (the app has
    one), its first text block becomes the block that broke off (its start dropped, its index mapped), its
    later blocks are numbered on, and its message_delta reports the whole answer's output tokens and the
    original prompt's input tokens (when the original stream reported them)."""

    def __init__(self) -> None:
        super().__init__()
        self._open: int | None = None  # the index of the block the app has seen start but not stop
        self._next = 0  # the index the next new block gets in the app's stream
        self._offset = 0  # continuation block i is the app's block i + offset
        self._input_tokens: Any = None
        self._trim = False  # the prefill lost trailing white space: drop it from the continuation's start

    def body(self, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any] | None:
        """The Messages request with `text` as the final assistant turn (after the app's own prefill, if any),
        without trailing white space, which Anthropic refuses in a prefill."""
        messages = list(body["messages"])
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant":
            prefill = _plain_text(last.get("content"))
            if prefill is None:
                return None  # the app's own final turn is not plain text: nothing to append to
            messages.pop()
            text = prefill + text
        final = text.rstrip()
        self._trim = final != text
        return {**body, "messages": [*messages, {"role": "assistant", "content": final}]}

    def relay(self, data: bytes) -> bytes:
        if not data:
            return data
        out: list[bytes] = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            kind, doc = _named_event(event)
            if doc is None:
                out.append(event + b"\n\n")
                continue
            keep = self._note(kind, doc) if not self.resumed else self._rewrite(kind, doc)
            if keep is None:
                continue
            if keep:
                out.append(event + b"\n\n")
            else:
                out.append(b"event: " + kind.encode() + b"\ndata: " + _dump(doc) + b"\n\n")
        return b"".join(out)

    def _note(self, kind: str, doc: dict[str, Any]) -> bool:
        """Before a resume: record the event, which goes out unchanged."""
        index = doc.get("index")
        if kind == "message_start":
            usage = (doc.get("message") or {}).get("usage") or {}
            self._input_tokens = usage.get("input_tokens")
        elif kind == "content_block_start" and isinstance(index, int):
            if (doc.get("content_block") or {}).get("type") != "text":
                self.stuck = True
            self._open, self._next = index, index + 1
        elif kind == "content_block_stop":
            self._open = None
        elif kind == "content_block_delta":
            delta = doc.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
            else:
                self.stuck = True
        return True

    def _rewrite(self, kind: str, doc: dict[str, Any]) -> bool | None:
        """After a resume: the continuation's event as the original stream's (False: rewritten, None: dropped)."""
        if kind == "message_start":
            self._offset = self._open if self._open is not None else self._next
            return None
        index = doc.get("index")
        if isinstance(index, int):
            if kind == "content_block_start" and index == 0 and self._open is not None:
                return None  # it goes on in the block that broke off
            doc["index"] = index + self._offset
            delta = doc.get("delta") or {}
            if self._trim and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                delta["text"] = delta["text"].lstrip()  # the app already has the white space
                self._trim = not delta["text"]
            return False
        usage = doc.get("usage")
        if kind == "message_delta" and isinstance(usage, dict):
            if isinstance(usage.get("output_tokens"), int):
                usage["output_tokens"] += self.before
            if "input_tokens" in usage and self._input_tokens:  # a translated stream's message_start says 0
                usage["input_tokens"] = self._input_tokens  # the continuation's counted the prefill too
            return False
        return True


_SPLICES: dict[str, type[_Splice]] = {"chat": _ChatSplice, "messages": _MessagesSplice}
"""The inbound APIs whose streams can be continued (see the module's docstring for Responses)."""


def can_continue(call: Call) -> bool:
    """Whether an interrupted stream of this call could be resumed at all (its API, a prefill backend)."""
    return (
        call.stream
        and call.api.api in _SPLICES
        and any(PREFILL in c.spec.capabilities for c in call.runtime.candidates)
    )


class Continuation:
    """What the app has been sent of one stream, and how to go on from there."""

    __slots__ = ("_call", "_dispatcher", "_splice")

    def __init__(self, dispatcher: Dispatcher, call: Call) -> None:
        self._dispatcher = dispatcher
        self._call = call
        self._splice = _SPLICES[call.api.api]()

    @property
    def text(self) -> str:
        """The answer's text the app has received so far."""
        return "".join(self._splice.text)

    def relay(self, data: bytes) -> bytes:
        """Note what `data` (whole SSE events) tells the app; after a resume, the events rewritten into the
        original stream."""
        return self._splice.relay(data)

    def cost_so_far(self, candidate: Candidate) -> float:
        """An estimate of what the interrupted attempt cost (its usage never arrived): the prompt and the
        text delivered, at its backend's prices."""
        delivered = len(self.text) // CHARS_PER_TOKEN
        return candidate.spec.price.cost(self._call.tokens_in, delivered)

    async def resume(self, failed: Candidate) -> Answer | None:
        """Ask a prefill backend (another than `failed` first) to continue; its Answer with the first chunk
        of the continuation, or None when none can (not only text was sent, no backend, no budget)."""
        call = self._call
        runtime = call.runtime
        splice = self._splice
        if splice.stuck:
            return None
        text = self.text
        excluded = call.policy.excluded if call.policy is not None else {}  # by LLMPolicy: never continued on
        able = []
        for c in runtime.candidates:
            if PREFILL not in c.spec.capabilities or not c.spec.serves(call.needs) or c.name in excluded:
                continue
            codec = runtime.upstreams[c.name].codecs.get(call.api.api)
            body = splice.body(call.body, text, c.spec)
            if codec is None or body is None or (codec.translates and codec.lacks(body) is not None):
                continue  # this backend cannot take this prefill (the messages->chat translation, for one)
            if runtime.detector.is_available(c.name):
                able.append((c, body))
        able.sort(key=lambda pair: pair[0] is failed)
        if not able or not runtime.retry_budget.try_acquire_retry(time.monotonic()):
            return None
        timeout = runtime.route.priorities[call.priority].timeout
        for candidate, body in able:
            resumed = Call(
                runtime,
                call.api,
                body,
                True,
                call.priority,
                time.monotonic() + timeout,
                call.needs,
                tokens_in=call.tokens_in + len(text) // CHARS_PER_TOKEN,
                tokens_out=call.tokens_out,
                headers=call.headers,
                trace=call.trace,  # the continuation is one more attempt of the app's request
            )
            try:
                answer = await self._dispatcher.attempt(resumed, candidate)
            except UpstreamError:
                continue
            splice.resumed = True
            splice.before = len(text) // CHARS_PER_TOKEN
            return answer
        return None


def _plain_text(content: Any) -> str | None:
    """The text of a message's content when it is only text (a string, or text blocks); else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    return None


def _named_event(event: bytes) -> tuple[str, dict[str, Any] | None]:
    """An SSE event's name and JSON data (None when it has no JSON object)."""
    kind, data = "", []
    for line in event.split(b"\n"):
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            data.append(line[6:])
    try:
        doc = json.loads(b"\n".join(data)) if data else None
    except ValueError:
        return kind, None
    if not isinstance(doc, dict):
        return kind, None
    return str(doc.get("type") or kind), doc


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
