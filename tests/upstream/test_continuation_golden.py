"""A Messages or Responses stream served through the chat translation, broken off and continued on a chat
prefill backend, pinned by golden files (golden/continuation/*.json): the chat request the continuation
sends, and every event the app receives, the broken attempt's and the spliced continuation's.

Each file holds the app's `request`, the prefill `backend` (provider, selfHosted), the chat chunks of the
broken attempt (`broken_chunks`, cut before their finish), what that attempt was `billed` (input and output
tokens, as the sidecar estimates them), the `continuation_request` the backend must receive and its
`continuation_chunks`, and the app's `events`. The requests and the app's events are checked against the
providers' published specs.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from llmroute.model import Backend
from llmroute.sidecar.continuation import Translated, chat_continuation
from llmroute.sidecar.splice import MessagesSplice, ResponsesSplice, Splice
from llmroute.sidecar.upstream.codecs import CODECS

from ..specs import responses_event_errors, spec_errors

GOLDEN = pathlib.Path(__file__).parent / "golden" / "continuation"
CASES = sorted(p.stem for p in GOLDEN.glob("*.json"))
MODEL = "gpt-primary"


def _sse(chunks: list[Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def _events(data: bytes) -> list[dict[str, Any]]:
    """The app's events as {event, data}."""
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            name, payload = block.split("\n")
            out.append({"event": name.removeprefix("event: "), "data": json.loads(payload.removeprefix("data: "))})
    return out


def _stamped(event: dict[str, Any]) -> dict[str, Any]:
    """`event` with a response's completion time (the clock's) replaced by a marker saying it was set."""
    response = event["data"].get("response")
    if isinstance(response, dict) and isinstance(response.get("completed_at"), int):
        response["completed_at"] = "<set>"
    return event


def _splice(api: str) -> Splice:
    return MessagesSplice() if api == "messages" else ResponsesSplice()


@pytest.mark.parametrize("name", CASES)
def test_a_continuation_through_the_chat_translation(name: str) -> None:
    case = json.loads((GOLDEN / f"{name}.json").read_text())
    api, request = case["api"], case["request"]
    codec = CODECS[(api, "chat")]
    backend = Backend("fallback", "openai", "http://fallback/v1", "gpt-fallback", **case["backend"])
    splice = _splice(api)
    broken = Translated(codec.translator(request, MODEL))
    sent = splice.relay(broken.events(_sse(case["broken_chunks"]), last=False))

    continuation = chat_continuation(api, request, "".join(splice.text), backend)
    assert continuation == case["continuation_request"]
    assert spec_errors("openai", "CreateChatCompletionRequest", continuation) == []

    splice.resume(trim=False)
    splice.prompts, splice.before = case["billed"]["input"], case["billed"]["output"]
    resumed = Translated(codec.translator(request, "gpt-fallback"))
    sent += splice.relay(resumed.events(_sse(case["continuation_chunks"]), last=True))
    events = _events(sent)
    for event in events:
        if api == "responses":
            assert responses_event_errors(event["data"]) == []
        else:
            assert spec_errors("anthropic", "MessageStreamEvent", event["data"]) == []
    assert [_stamped(e) for e in events] == case["events"]
