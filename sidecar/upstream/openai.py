"""OpenAI chat.completions to an upstream that speaks it (OpenAI, Azure, any compatible API): a pass-through."""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.upstream.base import DONE, check_malformed, compact_json, json_object, wants_usage
from llmroute.sidecar.upstream.errors import bad_body, cut_short, error_from_event
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Completion, Usage


class ChatCodec:
    """OpenAI chat.completions to any OpenAI-compatible upstream: the body goes through with `model` replaced."""

    inbound: Api = "chat"
    translates = False
    upstream: Api = "chat"

    def lacks(self, request: dict[str, Any]) -> str | None:
        """Nothing: the upstream speaks the app's own format."""
        return None

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The app's body with the upstream model, and in streams always asking for the usage chunk."""
        body = dict(request)
        body["model"] = model
        if stream:
            body["stream"] = True
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return compact_json(body).encode()

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The body as is (no re-serialising), its usage read for cost."""
        doc = answer_doc(status, body)
        if not isinstance(doc.get("choices"), list):
            raise bad_body(status, "no choices")
        return Completion(body, Usage.from_openai(doc.get("usage")))

    def translator(self, request: dict[str, Any], model: str) -> OpenAIStream:
        """Forwards events as they are; drops the usage-only chunk unless the app asked for it."""
        return OpenAIStream(forward_usage=wants_usage(request))


CHAT = ChatCodec()


def answer_doc(status: int, body: bytes) -> dict[str, Any]:
    """A 2xx chat.completion body as JSON; UpstreamError when it is not an object or holds an error."""
    doc = json_object(body)
    if doc is None:
        raise bad_body(status, "not a JSON object")
    if doc.get("error"):
        raise error_from_event(doc["error"], "in a successful answer")
    return doc


# The keys an event is parsed for. One where each is absent or null is a plain delta, passed on unparsed.
_WATCHED = tuple((key, key + b":null", key + b": null") for key in (b'"error"', b'"usage"', b'"finish_reason"'))


def _plain_delta(data: bytes) -> bool:
    """Whether `data` looks like a JSON object in which error, usage and finish_reason are absent or null.

    Inside JSON strings quotes are escaped, so text can only add matches (and cost a parse), never hide
    a key; a key spaced unusually (`"usage" : 1`) is not counted as null and gets parsed too. The price:
    after a valid first event, a malformed event between braces is passed on instead of failing the stream.
    """
    if data[:1] != b"{" or data[-1:] != b"}":
        return False
    for key, compact, spaced in _WATCHED:
        found = data.count(key)
        if found and found != data.count(compact) + data.count(spaced):
            return False
    return True


class OpenAIStream:
    """OpenAI events are already what the app wants: check them, read usage, pass the bytes on.

    The first event is parsed in full (a backend that does not speak this format fails before the app
    got anything); after it, only events that may carry usage, a finish_reason or an error are.
    """

    __slots__ = ("_done", "_events", "_finished", "_forward_usage", "settled", "skipped", "usage")

    def __init__(self, *, forward_usage: bool) -> None:
        self.usage = Usage()
        self.settled = False
        self.skipped = 0
        self._forward_usage = forward_usage
        self._events = 0
        self._finished = False
        self._done = False

    def event(self, event: SSEEvent) -> list[bytes]:
        """Pass one event on; raises UpstreamError for an error event or a first event that is not JSON (a later
        one is skipped and counted: the stream may well go on)."""
        if self._done:
            return []
        self._events += 1
        if event.data == b"[DONE]":
            self._done = True
            return [DONE]
        if self._events > 1 and _plain_delta(event.data):
            return [b"data: " + event.data + b"\n\n"]
        chunk = json_object(event.data)
        if chunk is None:
            check_malformed(self._events)
            self.skipped += 1
            return []
        if chunk.get("error"):
            raise error_from_event(chunk["error"], "mid-stream")
        choices = chunk.get("choices")
        usage = chunk.get("usage")
        if usage:
            self.usage = Usage.from_openai(usage)
            self.settled = self._finished
            if not choices and not self._forward_usage:
                return []
        if choices and any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            self._finished = True
        return [b"data: " + event.data + b"\n\n"]

    def end(self) -> list[bytes]:
        """[DONE] if upstream finished without sending it; an error if the stream was cut short."""
        if self._done:
            return []
        if self._finished:
            self._done = True
            return [DONE]
        raise cut_short(self._events)
