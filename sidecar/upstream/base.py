"""Shared pieces of the upstream layer: what goes on the wire, the stream translator interface, SSE helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.scanner import make_scanner
from typing import Any, Protocol

from llmroute.sidecar.upstream.errors import bad_body
from llmroute.sidecar.upstream.sse import SSEEvent
from llmroute.sidecar.upstream.usage import Usage

DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class WireRequest:
    """What goes on the wire for one call. `headers` may hold the API key: never log or repr them."""

    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(default=b"", repr=False)


class StreamTranslator(Protocol):
    """Turns one upstream stream's events into SSE events of the app's API, counting usage on the way; the
    internal marker DONE says the answer is complete (the caller writes the API's own ending)."""

    usage: Usage
    skipped: int
    """Malformed events skipped after the first (counted in metrics; the stream went on without them)."""
    settled: bool
    """The answer has finished and its usage is in, though the upstream's own ending has not come yet."""

    def event(self, event: SSEEvent) -> list[bytes]:
        """The app-bound SSE events for one upstream event; raises UpstreamError for an error event."""
        ...

    def end(self) -> list[bytes]:
        """At upstream EOF: the closing events (ending with DONE); raises UpstreamError if cut short."""
        ...


def wants_usage(request: dict[str, Any]) -> bool:
    """Whether the app asked for the usage chunk at the end of a stream."""
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


compact_json = json.JSONEncoder(separators=(",", ":")).encode
"""json.dumps(value, separators=(",", ":")) without building an encoder for every call."""


def sse(payload: dict[str, Any]) -> bytes:
    """One app-bound SSE event."""
    return b"data: " + compact_json(payload).encode() + b"\n\n"


_decoder = json.JSONDecoder()
# What _decoder.decode itself scans with (JSONDecoder.__init__ makes it so; typeshed types the argument oddly).
_scan_once = make_scanner(_decoder)  # type: ignore[arg-type]


def json_loads(body: bytes) -> Any:
    """json.loads(body), with a short way for the usual case, an object in UTF-8 from its first byte to its
    last: no encoding detection (a `{` then a byte that is not 0 is UTF-8 to json.detect_encoding too) and
    no white-space scans around it. Anything else, errors included, takes json's own way."""
    if body[:1] != b"{" or body[1:2] in (b"", b"\x00"):
        return json.loads(body)
    text = body.decode("utf-8", "surrogatepass")
    if text[-1] == "}":
        try:
            doc, end = _scan_once(text, 0)
        except (StopIteration, ValueError):
            pass  # decode() below raises the error json.loads would
        else:
            if end == len(text):
                return doc
    return _decoder.decode(text)


def json_object(body: bytes) -> dict[str, Any] | None:
    """`body` decoded as a JSON object, or None."""
    try:
        doc = json_loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_malformed(events_seen: int) -> None:
    """For a stream event that is not a JSON object: fatal as the first event (the backend does not speak
    this format); after that the caller skips and counts it (one garbled event in a long answer; a stream
    that then ends without its finish is still cut short)."""
    if events_seen <= 1:
        raise bad_body(200, "stream event is not a JSON object")
