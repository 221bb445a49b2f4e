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
The Responses API itself cannot ask for a continuation, so a Responses stream is continued only through the
translation: a request it does not carry (stored responses, `previous_response_id`, built-in tools, ...)
ends with the API's `error` event. Only text can be continued: a stream that was calling tools, thinking or
refusing ends with the interruption instead, and Messages and Responses streams are continued once.
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
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.sse import SSEParser

PREFILL = "prefill"


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

    __slots__ = ("_billed", "_call", "_dispatcher", "_mark", "_prompt", "_splice", "_translated")

    def __init__(self, dispatcher: Dispatcher, call: Call) -> None:
        self._dispatcher = dispatcher
        self._call = call
        self._splice = _SPLICES[call.api.api]()
        self._translated: Translated | None = None
        self._prompt = call.tokens_in  # the current attempt's prompt, estimated
        self._mark = 0  # characters of text the app had when the current attempt began
        self._billed = (0, 0)  # the last interrupted attempt's (input, output) tokens

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

    def _plans(self, failed: Candidate) -> list[_Plan]:
        """Who can continue, how: (backend, API to call it in, body, translator factory or None for native),
        backends other than `failed` first."""
        call = self._call
        runtime = call.runtime
        api = call.api.api
        text = self.text
        excluded = call.policy.excluded if call.policy is not None else {}  # by LLMPolicy: never continued on
        plans: list[_Plan] = []
        for c in runtime.candidates:
            if PREFILL not in c.spec.capabilities or not c.spec.serves(call.needs) or c.name in excluded:
                continue
            if not runtime.detector.is_available(c.name):
                continue
            codec = runtime.upstreams[c.name].codecs.get(api)
            if codec is None:
                continue
            if codec.translates and codec.upstream == "chat" and api in _TO_CHAT:
                if codec.lacks(call.body) is not None:
                    continue  # the app's request itself does not go through this translation
                plans.append((c, CHAT, chat_continuation(api, call.body, text, c.spec), codec.translator))
                continue
            body = self._splice.body(call.body, text, c.spec)
            if body is None or (codec.translates and codec.lacks(body) is not None):
                continue  # this backend cannot take this prefill
            plans.append((c, call.api, body, None))
        plans.sort(key=lambda plan: plan[0] is failed)
        return plans

    async def resume(self, failed: Candidate) -> Answer | None:
        """Ask a prefill backend (another than `failed` first) to continue; its Answer with the first chunk
        of the continuation, or None when none can (not only text was sent, no backend, no budget)."""
        call = self._call
        runtime = call.runtime
        splice = self._splice
        if splice.stuck or (splice.resumed and splice.once):
            return None
        plans = self._plans(failed)
        if not plans or not runtime.retry_budget.try_acquire_retry(time.monotonic()):
            return None
        self._bill()
        text = self.text
        timeout = runtime.route.priorities[call.priority].timeout
        for candidate, api, body, translator in plans:
            prompt = call.tokens_in + len(text) // CHARS_PER_TOKEN
            resumed = Call(
                runtime,
                api,
                body,
                True,
                call.priority,
                time.monotonic() + timeout,
                call.needs,
                tokens_in=prompt,
                tokens_out=call.tokens_out,
                headers=call.headers if api is call.api else None,
                trace=call.trace,  # the continuation is one more attempt of the app's request
            )
            call.attempts += 1
            try:
                answer = await self._dispatcher.attempt(resumed, candidate)
            except UpstreamError:
                continue
            splice.resumed = True
            splice.reported_in = None
            splice.trim = candidate.spec.provider == "anthropic" and text != text.rstrip()
            self._prompt = prompt
            self._translated = None if translator is None else Translated(translator(call.body, candidate.spec.model))
            return answer
        return None
