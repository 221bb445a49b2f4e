"""Messages and Responses streams that break off mid-answer, read with the official SDKs over real sockets.

A Messages stream is continued on a `prefill` backend (natively, or through the chat translation) and reaches
the app as one message; a Responses stream is continued through the chat translation, and one that only a
native Responses backend can carry ends with the Responses `error` event.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from llmroute.sidecar.inbound.messages import MESSAGES
from llmroute.sidecar.splice import MessagesSplice
from llmroute.sim import Behavior, Latency

from .harness import running

BROKEN = Behavior(latency=Latency.fixed(0.01), midstream_failure_rate=1.0, output_tokens=6)
RESCUER = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
PREFILL: dict[str, Any] = {"capabilities": ["prefill"]}
ORDERED = {"strategy": "ordered"}
ASK: Any = [{"role": "user", "content": "Tell me a story"}]


async def _read_messages(client: anthropic.AsyncAnthropic, messages: Any = ASK) -> tuple[list[str], str, Any, int]:
    """The raw event types, the text, the final message and message_start's input tokens of one streamed
    Messages answer."""
    kinds = []
    started = -1
    async with client.messages.stream(model="chat", max_tokens=100, messages=messages) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "message_start":
                started = event.message.usage.input_tokens
        final = await stream.get_final_message()
    text = "".join(block.text for block in final.content if block.type == "text")
    return [k for k in kinds if k not in ("text", "ping")], text, final, started


@pytest.mark.parametrize("broken_kind", ["anthropic", "openai"])
async def test_a_messages_stream_that_breaks_off_is_continued_as_one_message(tmp_path: Path, broken_kind: str) -> None:
    # The first backend (native Messages, or chat translated to Messages) sends "token" and fails. The
    # Anthropic backend that declares prefill gets the text sent so far as the final assistant turn, and
    # its events join the app's message: one message_start, one text block, one whole answer.
    backends = {"broken": (broken_kind, BROKEN), "rescuer": ("anthropic", RESCUER)}
    extra = {"rescuer": PREFILL}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        kinds, text, final, prompt_tokens = await _read_messages(h.anthropic())
        assert kinds == [
            "message_start",
            "content_block_start",
            "content_block_delta",  # "token", from the broken backend
            *["content_block_delta"] * 4,  # the continuation
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert text == "token" + "token token token token"
        assert final.stop_reason == "end_turn"
        assert "broken" in final.id  # the message the app started on
        assert final.usage.output_tokens == 4 + 1  # the continuation's, plus the text sent before (estimated)
        prompt = h.sims["rescuer"].stats.last_json
        assert prompt["messages"] == [*ASK, {"role": "assistant", "content": "token"}]
        assert h.sims["rescuer"].stats.last_headers["anthropic-version"]  # the app's protocol version, kept
        # Both attempts were billed their prompt: the broken one's as its message_start reported it (a stream
        # translated from chat reports none there: then the sidecar's estimate), plus the continuation's.
        continued = len(h.sims["rescuer"].stats.last_body or b"") // 4  # the sim's own count
        if broken_kind == "anthropic":
            assert prompt_tokens > 0
        else:
            assert prompt_tokens == 0
            prompt_tokens = MESSAGES.parse({"model": "chat", "max_tokens": 100, "messages": ASK}).tokens_in
        assert final.usage.input_tokens == prompt_tokens + continued
        async with h.http() as http:
            metrics = (await http.get(f"{h.admin_url}/metrics")).text
        assert 'llmroute_stream_continuations_total{route="chat"} 1.0' in metrics


async def test_a_fail_over_before_the_first_chunk_does_not_use_up_the_continuation(tmp_path: Path) -> None:
    # `retry.attempts: 1`: the first backend answers 503, the request fails over to the second, whose stream
    # breaks off. That fail-over happened before the stream began: the one continuation the route allows is
    # still there, and the app gets the whole answer.
    backends = {"down": Behavior(latency=Latency.fixed(0.01), error_rate=1.0), "broken": BROKEN, "rescuer": RESCUER}
    spec = {**ORDERED, "retry": {"attempts": 1}}
    async with running(tmp_path, backends, spec=spec, backend_extra={"rescuer": PREFILL}) as h:
        body = {"model": "chat", "messages": ASK, "stream": True}
        async with h.http() as http, http.stream("POST", "/chat/completions", json=body) as answer:
            events = [line[6:] async for line in answer.aiter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "token" + "token token token token"
        assert h.sims["down"].stats.requests >= 1 and h.sims["broken"].stats.requests >= 1
        assert h.sims["rescuer"].stats.last_json["messages"][-1] == {
            "role": "assistant",
            "content": "token",
            "prefix": True,
        }


async def test_a_continuation_appends_to_the_apps_own_prefill_without_trailing_white_space(tmp_path: Path) -> None:
    backends = {"broken": ("anthropic", BROKEN), "rescuer": ("anthropic", RESCUER)}
    messages = [*ASK, {"role": "assistant", "content": [{"type": "text", "text": "Once upon a time, "}]}]
    async with running(tmp_path, backends, spec=ORDERED, backend_extra={"rescuer": PREFILL}) as h:
        _, text, _, _ = await _read_messages(h.anthropic(), messages)
        assert text == "token" + "token token token token"
        sent = h.sims["rescuer"].stats.last_json["messages"]
        assert sent == [*ASK, {"role": "assistant", "content": "Once upon a time, token"}]


async def test_a_messages_stream_the_chat_translation_cannot_carry_ends_with_the_error_event(tmp_path: Path) -> None:
    # The only prefill backend speaks chat, and the request has `top_k`, which the translation to chat does not
    # carry: it is not asked, and the app's SDK raises the error naming the interruption.
    backends = {"broken": ("anthropic", BROKEN), "compat": ("openai", RESCUER)}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra={"compat": PREFILL}) as h:
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with h.anthropic().messages.stream(
                model="chat", max_tokens=100, messages=ASK, extra_body={"top_k": 5}
            ) as stream:
                async for _ in stream:
                    pass
        assert "backend broken failed mid-stream" in str(caught.value)
        assert caught.value.body["error"]["type"] == "api_error"
        assert "Tell me a story" not in (h.sims["compat"].stats.last_body or b"").decode()  # a shadow probe at most
        async with h.http() as http:
            metrics = (await http.get(f"{h.admin_url}/metrics")).text
        assert "llmroute_stream_continuations_total{" not in metrics


async def test_a_native_responses_stream_is_continued_through_the_chat_translation(tmp_path: Path) -> None:
    # The stream the app started on comes from a backend that serves the Responses API natively; the API
    # cannot ask it for a continuation, but the chat prefill backend can carry this stateless request: its
    # chunks come back as the app's Responses events, under the app's response and message ids.
    backends = {"broken": BROKEN, "rescuer": RESCUER}
    extra = {"broken": {"apis": ["responses"]}, "rescuer": PREFILL}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        kinds: list[str] = []
        async with h.client().responses.stream(model="chat", input="Tell me a story") as stream:
            async for event in stream:
                kinds.append(event.type)
            final = await stream.get_final_response()
        assert final.output_text == "token" + "token token token token"
        assert kinds.count("response.created") == kinds.count("response.output_item.added") == 1
        assert kinds[-1] == "response.completed" and "broken" in final.id
        sent = h.sims["rescuer"].stats.last_json
        assert sent["messages"] == [
            {"role": "user", "content": "Tell me a story"},
            {"role": "assistant", "content": "token", "prefix": True},
        ]


async def test_a_responses_stream_is_continued_on_a_backend_that_serves_responses_natively_and_chat(
    tmp_path: Path,
) -> None:
    # Both backends serve the Responses API natively and chat as well (as OpenAI does): the stream the app
    # reads is native, and its continuation goes to the prefill backend's chat API, which can continue it.
    backends = {"broken": BROKEN, "rescuer": RESCUER}
    both = {"apis": ["chat", "responses"]}
    extra = {"broken": both, "rescuer": {**both, **PREFILL}}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        async with h.client().responses.stream(model="chat", input="Tell me a story") as stream:
            final = await stream.get_final_response()
        assert final.output_text == "token" + "token token token token"
        assert "broken" in final.id  # the response the app started on
        assert h.sims["rescuer"].stats.last_path == "/v1/chat/completions"
        assert h.sims["rescuer"].stats.last_json["messages"][-1] == {
            "role": "assistant",
            "content": "token",
            "prefix": True,
        }


async def test_a_responses_stream_only_a_native_backend_can_carry_ends_with_the_responses_error_event(
    tmp_path: Path,
) -> None:
    # `store: true` needs a backend that keeps responses, and the Responses API cannot continue a partial
    # answer: the chat prefill backend cannot carry the request, so the stream ends with the API's own
    # `error` event, which the openai SDK raises, and no continuation is attempted.
    backends = {"broken": BROKEN, "rescuer": RESCUER}
    extra = {"broken": {"apis": ["responses"]}, "rescuer": PREFILL}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        seen: list[Any] = []
        with pytest.raises(openai.APIError) as caught:
            async with h.client().responses.stream(model="chat", input="Tell me a story", store=True) as stream:
                async for event in stream:
                    seen.append(event)
        assert "backend broken failed mid-stream" in caught.value.message
        assert seen[-1].type == "response.output_text.delta" and "response.completed" not in [e.type for e in seen]
        assert "Tell me a story" not in (h.sims["rescuer"].stats.last_body or b"").decode()  # a shadow probe at most


async def test_a_responses_only_backend_that_declares_prefill_is_passed_over_for_a_chat_prefill_backend(
    tmp_path: Path,
) -> None:
    # `native` serves only the Responses API and declares prefill, but that API cannot continue a partial
    # answer (an assistant item in `input` is a finished turn): the chat prefill backend after it in the
    # route continues the stream, through the translation, and `native` is never asked.
    backends = {"broken": BROKEN, "native": RESCUER, "rescuer": RESCUER}
    extra = {"broken": {"apis": ["responses"]}, "native": {"apis": ["responses"], **PREFILL}, "rescuer": PREFILL}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        async with h.client().responses.stream(model="chat", input="Tell me a story") as stream:
            final = await stream.get_final_response()
        assert final.output_text == "token" + "token token token token"
        assert h.sims["rescuer"].stats.last_json["messages"][-1] == {
            "role": "assistant",
            "content": "token",
            "prefix": True,
        }
        assert "Tell me a story" not in (h.sims["native"].stats.last_body or b"").decode()  # a shadow probe at most


async def test_a_responses_stream_whose_only_prefill_backend_serves_only_responses_ends_saying_why(
    tmp_path: Path,
) -> None:
    backends = {"broken": BROKEN, "native": RESCUER}
    extra = {"broken": {"apis": ["responses"]}, "native": {"apis": ["responses"], **PREFILL}}
    async with running(tmp_path, backends, spec=ORDERED, backend_extra=extra) as h:
        with pytest.raises(openai.APIError) as caught:
            async with h.client().responses.stream(model="chat", input="Tell me a story") as stream:
                async for _ in stream:
                    pass
        message = caught.value.message
        assert message.startswith("backend broken failed mid-stream")
        assert "not continued: no backend can continue it: native: serves the Responses API natively, which" in message
        assert "cannot continue a partial answer" in message
        assert "Tell me a story" not in (h.sims["native"].stats.last_body or b"").decode()


def _events(*docs: dict[str, Any]) -> bytes:
    return b"".join(f"event: {d['type']}\ndata: {json.dumps(d)}\n\n".encode() for d in docs)


def _docs(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in data.split(b"\n") if line.startswith(b"data: ")]


START = {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 30, "output_tokens": 1}}}


def _text_block(index: int, text: str, *, stop: bool) -> list[dict[str, Any]]:
    events = [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}},
    ]
    return [*events, {"type": "content_block_stop", "index": index}] if stop else events


def test_a_messages_continuation_after_a_closed_block_numbers_its_blocks_on() -> None:
    splice = MessagesSplice()
    assert splice.relay(_events(START, *_text_block(0, "Hello.", stop=True))).count(b"event: ") == 4
    splice.resume(trim=False)
    splice.before, splice.prompts = 2, 30  # what the broken attempt was billed
    continued = _docs(
        splice.relay(
            _events(
                {**START, "message": {"id": "msg_2", "usage": {"input_tokens": 33, "output_tokens": 1}}},
                *_text_block(0, " Bye.", stop=True),
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn"},
                    "usage": {"input_tokens": 33, "output_tokens": 3},
                },
                {"type": "message_stop"},
            )
        )
    )
    assert [d["type"] for d in continued] == [
        "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"
    ]  # fmt: skip
    assert {d["index"] for d in continued if "index" in d} == {1}  # a new block after the app's block 0
    assert continued[3]["usage"] == {"input_tokens": 33 + 30, "output_tokens": 3 + 2}  # both attempts' tokens


@pytest.mark.parametrize("block", [{"type": "thinking", "thinking": ""}, {"type": "tool_use", "id": "t", "name": "f"}])
def test_a_messages_stream_that_sent_more_than_text_cannot_be_continued(block: dict[str, Any]) -> None:
    splice = MessagesSplice()
    splice.relay(_events(START, {"type": "content_block_start", "index": 0, "content_block": block}))
    assert splice.stuck
