"""Resuming a stream that broke off mid-answer, on a backend that can continue a partial answer.

A backend that declares `capabilities: [prefill]` accepts an assistant message last and continues it:
Anthropic natively (the chat translation makes it the prefill), DeepSeek and Mistral with `prefix: true`
on that message, vLLM (`selfHosted`) with `continue_final_message`. When the stream the app is reading
dies or goes silent, the sidecar asks such a backend to continue from the text already sent and splices
its events into the app's stream (llmroute.sidecar.splice), so the app receives one whole answer.

Chat, Anthropic Messages and Responses streams are continued, whichever backend served them:
- natively where the API can ask for it: chat (any prefill backend), Messages (a prefill turn, on a backend
  that serves Messages);
- through the chat translation on a prefill backend that serves chat, for Messages and Responses requests
  that translation carries: the sidecar sends the translated chat request with the text as the prefill and
  turns the chat chunks back into the app's API with the translation's own stream translator.
The Responses API itself cannot ask for a continuation (an assistant item in its `input` is a finished
earlier turn, and nothing in a request asks the model to go on with it), so a Responses stream is continued
only through the translation (also on a backend that serves the Responses API natively, when it serves chat
as well), and a backend that serves only the Responses API never continues a stream: a
request the translation does not carry (stored responses, `previous_response_id`, built-in tools, ...) ends
with the API's `error` event. Only text can be continued: a stream that was calling tools, thinking or
refusing ends with the interruption instead.

A continuation that breaks off in turn is continued again the same way, from all the text the app has, for
every API alike. Each continuation is one more attempt of the app's request: at most the route's
`retry.attempts` continuations are asked for (fail-overs before the first chunk do not count against them),
each with the retry budget's leave, and its first chunk is due within the request's
own timeout (`x-llmroute-timeout-ms`, or its class's), as the stream's first chunk was. When none is left,
the app gets the API's error event, which names every interruption and why the last was not continued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llmroute.model import Backend
from llmroute.sidecar.balancer.candidates import Candidate
from llmroute.sidecar.dispatch import Answer, Call, Dispatcher
from llmroute.sidecar.inbound.base import CHARS_PER_TOKEN, Inbound
from llmroute.sidecar.inbound.chat import CHAT
from llmroute.sidecar.splice import ChatSplice, MessagesSplice, ResponsesSplice, Splice, chat_prefill
from llmroute.sidecar.upstream import messages_chat, responses_chat
from llmroute.sidecar.upstream.base import DONE, StreamTranslator
from llmroute.sidecar.upstream.codecs import CODECS
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.sse import SSEParser

PREFILL = "prefill"
NO_RESPONSES_PREFILL = (
    "serves the Responses API natively, which cannot continue a partial answer (no prefill: an assistant item in"
    " its input is a finished turn); only a backend that serves chat can continue a Responses stream"
)
"""Why a backend that serves the Responses API itself (and not chat) never continues a Responses stream."""


_SPLICES: dict[str, type[Splice]] = {"chat": ChatSplice, "messages": MessagesSplice, "responses": ResponsesSplice}
"""The inbound APIs whose streams can be continued."""
_TO_CHAT: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "messages": messages_chat.to_chat_request,
    "responses": responses_chat.to_chat_request,
}
"""How a request of an API a chat backend serves through a translation becomes the chat request to continue."""
_Plan = tuple[Candidate, Inbound, dict[str, Any], Callable[[dict[str, Any], str], StreamTranslator] | None]
"""A way to continue: the backend, the API to call it in, the body, and (for a continuation through the chat
translation) the translation's stream translator that turns its chunks back into the app's API."""


def can_continue(call: Call) -> bool:
    """Whether an interrupted stream of this call could be resumed at all (its API, a prefill backend)."""
    return (
        call.stream
        and call.api.api in _SPLICES
        and any(PREFILL in c.spec.capabilities for c in call.runtime.candidates)
    )


def chat_continuation(api: str, body: dict[str, Any], text: str, backend: Backend) -> dict[str, Any]:
    """The streamed chat request asking `backend` to continue `text` for a request of `api` (messages or
    responses) that the translation to chat carries: the translated request, the text as the prefill."""
    chat = _TO_CHAT[api](body, backend.model)
    chat["stream"], chat["stream_options"] = True, {"include_usage": True}
    return chat_prefill(chat, text, backend)


class Translated:
    """A continuation that came back as chat chunks: turned into the app's API by the translation's own
    stream translator before it is spliced."""

    __slots__ = ("_parser", "_translator")

    def __init__(self, translator: StreamTranslator) -> None:
        self._parser = SSEParser()
        self._translator = translator

    def events(self, data: bytes, *, last: bool) -> bytes:
        """The app-API events for `data` (chat chunks); with `last`, the translation's closing events too."""
        parts = [part for event in self._parser.feed(data) for part in self._translator.event(event)]
        if last:
            parts.extend(self._translator.end())
        return b"".join(part for part in parts if part != DONE)


class Continuation:
    """What the app has been sent of one stream, and how to go on from there."""

    __slots__ = (
        "_asked",
        "_billed",
        "_breaks",
        "_call",
        "_dispatcher",
        "_mark",
        "_prompt",
        "_splice",
        "_timeout",
        "_translated",
        "why_not",
    )

    def __init__(self, dispatcher: Dispatcher, call: Call, timeout: float) -> None:
        self._dispatcher = dispatcher
        self._call = call
        self._timeout = timeout  # the request's own time to its first chunk: each continuation's too
        self._splice = _SPLICES[call.api.api]()
        self._translated: Translated | None = None
        self._prompt = call.tokens_in  # the current attempt's prompt, estimated
        self._mark = 0  # characters of text the app had when the current attempt began
        self._billed = (0, 0)  # the last interrupted attempt's (input, output) tokens
        self._breaks: list[str] = []  # the interruptions continued so far
        self._asked = 0  # continuations asked for, started or not
        self.why_not = ""
        """Why the last interruption was not continued (after `resume` returned None)."""

    @property
    def text(self) -> str:
        """The answer's text the app has received so far."""
        return "".join(self._splice.text)

    def relay(self, data: bytes, *, last: bool = False) -> bytes:
        """Note what `data` (whole SSE events) tells the app; after a resume, the events rewritten into the
        original stream. `last`: the stream's final data (a translated continuation's closing events follow)."""
        if self._translated is not None:
            data = self._translated.events(data, last=last)
        return self._splice.relay(data)

    def sequence(self, stream: int) -> int:
        """The next event number of the app's stream: the stream's own (`stream`) until a continuation was
        spliced in, then the splice's (it numbers the continuation's events on)."""
        return self._splice.sequence if self._splice.resumed else stream

    def cost_so_far(self, candidate: Candidate) -> float:
        """What the attempt `resume` went on from was billed (its usage never arrived): its prompt and the text
        it delivered, at its backend's prices."""
        return candidate.spec.price.cost(*self._billed)

    def tokens_so_far(self) -> int:
        """The tokens the attempt `resume` went on from was billed, as `cost_so_far` prices them: its prompt
        and the text it delivered (for the LLMPolicy tokens quotas)."""
        return sum(self._billed)

    def _bill(self) -> None:
        """The attempt that broke off: its prompt (as its stream reported it, or estimated) and the text it
        delivered count in the final usage and cost."""
        splice = self._splice
        text = self.text
        billed = (splice.reported_in or self._prompt, (len(text) - self._mark) // CHARS_PER_TOKEN)
        self._billed = billed
        splice.prompts += billed[0]
        splice.before += billed[1]
        self._mark = len(text)

    def interruption(self, failed: Candidate, error: UpstreamError) -> str:
        """The message of the error event that ends the app's stream: the interruption the app got last, the
        ones continued before it, and why it was not continued."""
        parts = [f"backend {failed.name} failed mid-stream: {error}"]
        if self._breaks:
            parts.append(f"it was continuing the answer after {', then '.join(self._breaks)}")
        if self.why_not:
            parts.append(f"not continued: {self.why_not}")
        return "; ".join(parts)

    def _plans(self, failed: Candidate) -> tuple[list[_Plan], list[str]]:
        """Who can continue, how: (backend, API to call it in, body, translator factory or None for native),
        backends other than `failed` first; and why each of the other backends that declare prefill cannot."""
        call = self._call
        runtime = call.runtime
        api = call.api.api
        text = self.text
        excluded = call.policy.excluded if call.policy is not None else {}  # by LLMPolicy: never continued on
        plans: list[_Plan] = []
        cannot: list[str] = []
        for c in runtime.candidates:
            if PREFILL not in c.spec.capabilities:
                continue
            codec = runtime.upstreams[c.name].codecs.get(api)
            if codec is not None and not self._splice.asks_natively and "chat" in c.spec.apis:
                codec = CODECS.get((api, "chat"), codec)  # its chat API can continue what this API cannot
            if not c.spec.serves(call.needs):
                why = f"does not support {', '.join(sorted(c.spec.lacks(call.needs)))}"
            elif c.name in excluded:
                why = f"left out by LLMPolicy: {excluded[c.name]}"
            elif not runtime.detector.is_available(c.name):
                why = "unavailable (ejected, half-open or at maxConcurrency)"
            elif codec is None:
                why = f"serves no {api} API, natively or translated"
            elif codec.translates and codec.upstream == "chat" and api in _TO_CHAT:
                missing = codec.lacks(call.body)
                if missing is None:
                    plans.append((c, CHAT, chat_continuation(api, call.body, text, c.spec), codec.translator))
                    continue
                why = f"the chat translation cannot carry {missing}"
            elif (body := self._splice.body(call.body, text, c.spec)) is None:
                why = NO_RESPONSES_PREFILL if api == "responses" else "the app's own final assistant turn is not text"
            elif codec.translates and (missing := codec.lacks(body)) is not None:
                why = f"cannot take this prefill ({missing})"
            else:
                plans.append((c, call.api, body, None))
                continue
            cannot.append(f"{c.name}: {why}")
        plans.sort(key=lambda plan: plan[0] is failed)
        return plans, cannot

    def _bound(self) -> str | None:
        """Why no further continuation may be asked for: the route's `retry.attempts` used by continuations
        (fail-overs before the first chunk do not count: the stream was not broken then), or its retry budget."""
        runtime = self._call.runtime
        retry = runtime.route.retry
        if self._asked >= retry.attempts:
            return f"the route's {retry.attempts} retry attempts were used"
        now = time.monotonic()
        if not runtime.retry_budget.try_acquire_retry(now):
            metrics = self._dispatcher.metrics
            metrics.child(metrics.retries_refused, runtime.route.name).inc()
            return f"the retry budget was spent ({runtime.retry_budget.describe(now)})"
        return None

    async def resume(self, failed: Candidate, error: UpstreamError) -> Answer | None:
        """Ask a prefill backend (another than `failed` first) to continue after `error`; its Answer with the
        first chunk of the continuation, or None (and `why_not`) when none can: not only text was sent, no
        backend can, no attempt is left, or every one asked failed."""
        call = self._call
        splice = self._splice
        self.why_not = ""
        if splice.stuck:
            self.why_not = (
                "the answer holds more than text (a tool call, thinking, a refusal), which no prefill carries"
            )
            return None
        plans, cannot = self._plans(failed)
        if not plans:
            self.why_not = "no backend can continue it: " + "; ".join(cannot)
            return None
        text = self.text
        failures: list[str] = []
        for number, (candidate, api, body, translator) in enumerate(plans):
            bound = self._bound()
            if bound is not None:
                failures.append(bound)
                break
            if number == 0:
                self._bill()  # the attempt that broke off, once it is going to be continued
            prompt = call.tokens_in + len(text) // CHARS_PER_TOKEN
            resumed = Call(
                call.runtime,
                api,
                body,
                True,
                call.priority,
                time.monotonic() + self._timeout,
                call.needs,
                tokens_in=prompt,
                tokens_out=call.tokens_out,
                headers=call.headers if api is call.api else None,
                trace=call.trace,  # the continuation is one more attempt of the app's request
            )
            call.attempts += 1
            self._asked += 1
            try:
                answer = await self._dispatcher.attempt(resumed, candidate)
            except UpstreamError as refused:
                failures.append(f"{candidate.name} failed to continue it: {refused}")
                continue
            self._breaks.append(f"backend {failed.name} failed mid-stream: {error}")
            splice.resume(trim=candidate.spec.provider == "anthropic" and text != text.rstrip())
            self._prompt = prompt
            self._translated = None if translator is None else Translated(translator(call.body, candidate.spec.model))
            answer.continued_from = (splice.prompts, splice.before)
            return answer
        self.why_not = "; ".join(failures)
        return None
