"""Native codecs: the inbound API is the upstream's own, so the body travels unchanged but for `model`.

Unknown fields and provider extensions (`cache_control`, thinking blocks, Responses tools) go through
as the app sent them; the sidecar only reads what it needs: usage for cost, and for streams whether
the answer ended properly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.upstream.anthropic_stream import usage_of
from llmroute.sidecar.upstream.base import DONE, check_malformed, compact_json, json_object, wants_usage
from llmroute.sidecar.upstream.errors import UpstreamError, bad_body, cut_short, error_from_event
from llmroute.sidecar.upstream.openai import OpenAIStream
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Completion, Usage

UsageReader = Callable[[Any], Usage]


def responses_usage(usage: Any) -> Usage:
    """A Responses API `usage` (input_tokens, input_tokens_details.cached_tokens, output_tokens)."""
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage.from_openai(
        {
            "prompt_tokens": usage.get("input_tokens"),
            "completion_tokens": usage.get("output_tokens"),
            "prompt_tokens_details": {"cached_tokens": cached},
        }
    )


class NativeCodec:
    """Same API in and out. `answer_key` is the field every 2xx answer of the API has (checked, so a
    backend that answers something else fails over instead of handing the app garbage)."""

    __slots__ = ("_answer_key", "_error_type", "_usage", "_usage_option", "inbound", "upstream")
    translates = False

    def __init__(
        self, api: Api, answer_key: str, usage: UsageReader, *, usage_option: bool = False, error_type: bool = False
    ) -> None:
        self.inbound: Api = api
        self.upstream: Api = api
        self._answer_key = answer_key
        self._usage = usage
        self._usage_option = usage_option
        """Streams of this API report usage only when asked through stream_options.include_usage."""
        self._error_type = error_type
        """Errors come as `{"type": "error", "error": {...}}` (Anthropic), not `{"error": {...}}`."""

    def __repr__(self) -> str:
        return f"NativeCodec({self.inbound!r})"

    def lacks(self, request: dict[str, Any]) -> str | None:
        """Nothing: the upstream speaks the app's own format."""
        return None

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The app's body with the upstream model, and for a stream `stream: true` (the app's body says so; a
        shadow probe's does not) and, where the API needs asking, usage."""
        body = dict(request)
        body["model"] = model
        if stream:
            body["stream"] = True
        if stream and self._usage_option:
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return compact_json(body).encode()

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The body as is, its usage read for cost."""
        doc = json_object(body)
        if doc is None:
            raise bad_body(status, "not a JSON object")
        error = doc.get("error") if not self._error_type or doc.get("type") == "error" else None
        if error:
            raise error_from_event(error, "in a successful answer")
        if not isinstance(doc.get(self._answer_key), list):
            raise bad_body(status, f"no {self._answer_key}")
        return Completion(body, self._usage(doc.get("usage")))

    def translator(self, request: dict[str, Any], model: str) -> OpenAIStream | NamedEventStream:
        """Passes the upstream's events on unchanged."""
        if self.inbound == "completions":
            return OpenAIStream(forward_usage=wants_usage(request))
        if self.inbound == "responses":
            return NamedEventStream(_ResponsesEvents())
        return NamedEventStream(_MessagesEvents())


class _ResponsesEvents:
    """The Responses API's stream: ends with response.completed or .incomplete (a proper end: the answer hit
    its limit), usage riding on it; `error` and response.failed are failures."""

    finish = frozenset({"response.completed", "response.incomplete"})

    def usage(self, doc: dict[str, Any], usage: Usage) -> Usage:
        response = doc.get("response")
        if doc.get("type") in self.finish and isinstance(response, dict):
            return responses_usage(response.get("usage"))
        return usage

    def error(self, kind: str, doc: dict[str, Any]) -> UpstreamError | None:
        if kind == "error":  # OpenAI nests the error under `error`; its documented event is flat
            return error_from_event(
                _with_type(doc.get("error") if isinstance(doc.get("error"), dict) else doc), "mid-stream"
            )
        if kind == "response.failed":
            response = doc.get("response")
            error = response.get("error") if isinstance(response, dict) else None
            return error_from_event(_with_type(error), "mid-stream")
        return None


def _with_type(error: Any) -> Any:
    """A Responses error, whose kind may be only in `code` (response.failed's error has no type), with
    that kind as `type` so rate limits are told apart from failures."""
    if isinstance(error, dict) and error.get("type") in (None, "error"):
        return {**error, "type": error.get("code")}
    return error


class _MessagesEvents:
    """Anthropic's Messages stream: usage in message_start and message_delta, ends with message_stop."""

    finish = frozenset({"message_stop"})

    def usage(self, doc: dict[str, Any], usage: Usage) -> Usage:
        if doc.get("type") == "message_start" and isinstance(doc.get("message"), dict):
            return usage_of(doc["message"].get("usage"), usage)
        return usage_of(doc.get("usage"), usage)

    def error(self, kind: str, doc: dict[str, Any]) -> UpstreamError | None:
        return error_from_event(doc.get("error"), "mid-stream") if kind == "error" else None


class NamedEventStream:
    """Passes a stream of named SSE events (`event:` + JSON `data:`) through, reading usage and the end.

    Every event is parsed: these APIs put usage and the end in events of their own types, and the app
    must never be told an answer is complete when it was cut short.
    """

    __slots__ = ("_done", "_events", "_rules", "sequence", "skipped", "usage")
    settled = False  # the final event carries the usage: nothing settles before it

    def __init__(self, rules: _ResponsesEvents | _MessagesEvents) -> None:
        self.usage = Usage()
        self.sequence = 0
        """The next sequence_number, for streams that number their events (Responses)."""
        self.skipped = 0
        self._rules = rules
        self._events = 0
        self._done = False

    def event(self, event: SSEEvent) -> list[bytes]:
        """Pass one event on; raises UpstreamError for an error event or an event that is not JSON."""
        if self._done:
            return []
        self._events += 1
        doc = json_object(event.data)
        if doc is None:
            check_malformed(self._events)
            self.skipped += 1
            return []
        kind = str(doc.get("type") or event.event)
        error = self._rules.error(kind, doc)
        if error is not None:
            raise error
        self.usage = self._rules.usage(doc, self.usage)
        number = doc.get("sequence_number")
        if isinstance(number, int):
            self.sequence = number + 1
        data = b"event: " + kind.encode() + b"\ndata: " + event.data.replace(b"\n", b"\ndata: ") + b"\n\n"
        if kind in self._rules.finish:
            self._done = True
            return [data, DONE]
        return [data]

    def end(self) -> list[bytes]:
        """Nothing if the final event came; otherwise the stream was cut short."""
        if self._done:
            return []
        raise cut_short(self._events)


COMPLETIONS = NativeCodec("completions", "choices", Usage.from_openai, usage_option=True)
EMBEDDINGS = NativeCodec("embeddings", "data", Usage.from_openai)
RESPONSES = NativeCodec("responses", "output", responses_usage)
MESSAGES = NativeCodec("messages", "content", usage_of, error_type=True)
