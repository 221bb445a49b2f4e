"""Resuming a chat stream that broke off mid-answer, on a backend that can continue a partial answer.

A backend that declares `capabilities: [prefill]` accepts an assistant message last and continues it:
Anthropic natively (the chat translation makes it the prefill), DeepSeek and Mistral with `prefix: true`
on that message, vLLM (`selfHosted`) with `continue_final_message`. When the stream the app is reading
dies or goes silent, the sidecar asks such a backend to continue from the text already sent and splices
its chunks into the app's stream under the original id and model, so the app receives one whole answer.
Only text can be continued: a stream that was calling tools ends with the interruption instead.
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


def can_continue(call: Call) -> bool:
    """Whether an interrupted stream of this call could be resumed at all (chat, a prefill backend)."""
    return (
        call.stream and call.api.api == "chat" and any(PREFILL in c.spec.capabilities for c in call.runtime.candidates)
    )


def continuation_body(body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any]:
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


class Continuation:
    """What the app has been sent of one chat stream, and how to go on from there."""

    __slots__ = ("_before", "_call", "_dispatcher", "_id", "_model", "_resumed", "_text", "_tools")

    def __init__(self, dispatcher: Dispatcher, call: Call) -> None:
        self._dispatcher = dispatcher
        self._call = call
        self._text: list[str] = []
        self._tools = False
        self._id: Any = None
        self._model: Any = None
        self._resumed = False
        self._before = 0
        """Tokens (estimated) the app had received when the stream was resumed: added to the final usage."""

    @property
    def text(self) -> str:
        """The answer's text the app has received so far."""
        return "".join(self._text)

    def relay(self, data: bytes) -> bytes:
        """Note what `data` (whole SSE events) tells the app; after a resume, the events rewritten into the
        original stream (its id and model, no second role chunk)."""
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
                self._tools = True
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            if not self._resumed:
                out.append(event + b"\n\n")
                continue
            opening = set(delta) <= {"role", "content"} and not delta.get("content")
            if choices and opening and not choices[0].get("finish_reason"):
                continue  # the continuation's own opening: the app already has one
            chunk["id"], chunk["model"] = self._id, self._model
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage["completion_tokens"] += self._before
                usage["total_tokens"] = usage.get("prompt_tokens", 0) + usage["completion_tokens"]
            out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
        return b"".join(out)

    def cost_so_far(self, candidate: Candidate) -> float:
        """An estimate of what the interrupted attempt cost (its usage never arrived): the prompt and the
        text delivered, at its backend's prices."""
        delivered = len(self.text) // CHARS_PER_TOKEN
        return candidate.spec.price.cost(self._call.tokens_in, delivered)

    async def resume(self, failed: Candidate) -> Answer | None:
        """Ask a prefill backend (another than `failed` first) to continue; its Answer with the first chunk
        of the continuation, or None when none can (tools were being called, no backend, no budget)."""
        call = self._call
        runtime = call.runtime
        if self._tools:
            return None
        able = [
            c
            for c in runtime.candidates
            if PREFILL in c.spec.capabilities and c.spec.serves(call.needs) and runtime.detector.is_available(c.name)
        ]
        able.sort(key=lambda c: c is failed)
        if not able or not runtime.retry_budget.try_acquire_retry(time.monotonic()):
            return None
        text = self.text
        timeout = runtime.route.priorities[call.priority].timeout
        for candidate in able:
            body = continuation_body(call.body, text, candidate.spec)
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
                trace=call.trace,  # the continuation is one more attempt of the app's request
            )
            try:
                answer = await self._dispatcher.attempt(resumed, candidate)
            except UpstreamError:
                continue
            self._resumed = True
            self._before = len(text) // CHARS_PER_TOKEN
            return answer
        return None
