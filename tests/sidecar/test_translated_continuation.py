"""Messages and Responses streams served through the chat translation, cut or stalled mid-answer, continued on
a chat prefill backend: read with the official SDKs through a real sidecar, against the fault-injecting
provider of bench/faults (real sockets; its fallback continues the one whole answer from any prefill).

The app must get one whole answer in its own API's event shape, with usage that adds up what each attempt
was billed, and the fallback must see the continuation in its provider's prefill shape (DeepSeek's
`prefix: true`, vLLM's `continue_final_message`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from llmroute.sidecar.inbound.base import CHARS_PER_TOKEN
from llmroute.sidecar.inbound.messages import MESSAGES
from llmroute.sidecar.inbound.responses import RESPONSES

from ..specs import responses_event_errors, spec_errors
from ..tools import REPO
from .harness import APP_KEY, sidecar_for

if str(REPO) not in sys.path:  # bench/ runs from the source tree (python -m bench.faults)
    sys.path.insert(0, str(REPO))

from bench.faults.provider import ANSWER, Action, FaultProvider, usage_of

PROMPT = "Tell me what the lighthouse keeper did that night."
AFTER = 10
"""Words the primary sends before its fault."""
DELIVERED = "".join(w + " " for w in ANSWER.split(" ")[:AFTER])
"""What the app has when the primary breaks off: the fallback is asked to continue from exactly this."""


@contextlib.asynccontextmanager
async def _route(tmp_path: Path, fault: str, shape: str, **fallback: Any) -> AsyncIterator[tuple[str, Any, Any]]:
    """A primary that breaks off after AFTER words (`cut` or `stall`) once armed (`_arm`) and a chat prefill
    fallback (`prefix`: an OpenAI-compatible API such as DeepSeek's; `vllm`: selfHosted), behind a sidecar;
    its base URL and the two providers. A short idle bound makes a stall count at once."""
    primary = FaultProvider("gpt-primary", lambda n, t: Action(fault, after=AFTER))  # type: ignore[arg-type]
    rescuer = FaultProvider("gpt-fallback")
    await primary.start()
    await rescuer.start()
    backup: dict[str, Any] = {"name": "fallback", "provider": "openai", "url": rescuer.url, "model": "gpt-fallback"}
    backup.update(capabilities=["prefill"], **fallback)
    if shape == "vllm":
        backup["selfHosted"] = True
    spec = {
        "models": ["chat"],
        "strategy": "ordered",
        "backends": [{"name": "primary", "provider": "openai", "url": primary.url, "model": "gpt-primary"}, backup],
        "priorities": {"normal": {"timeout": "10s", "streamIdle": {"min": "200ms", "max": "600ms"}}},
    }
    try:
        async with sidecar_for(tmp_path, spec) as sidecar:
            yield f"http://127.0.0.1:{sidecar.app_server.port}", primary, rescuer
    finally:
        await primary.stop()
        await rescuer.stop()


def _arm(primary: FaultProvider, rescuer: FaultProvider) -> None:
    """After the app's first, healthy request (the sidecar and the SDK warmed up, as in production): the
    primary breaks off from now on, and both providers' request logs start afresh."""
    primary.arm(time.monotonic())
    primary.requests.clear()
    rescuer.requests.clear()


def _apps(provider: FaultProvider) -> list[dict[str, Any]]:
    """The app's requests a provider saw (shadow probes set max_tokens)."""
    return [r for r in provider.requests if "max_tokens" not in r]


def _continuation_of(rescuer: FaultProvider) -> dict[str, Any]:
    """The one request of the app's the fallback saw: the continuation."""
    [request] = _apps(rescuer)
    return request


def _continuation(rescuer: FaultProvider, shape: str) -> dict[str, Any]:
    """The continuation request the fallback saw, checked for its provider's prefill shape."""
    request = _continuation_of(rescuer)
    final = request["messages"][-1]
    if shape == "vllm":
        assert final == {"role": "assistant", "content": DELIVERED}
        assert request["continue_final_message"] is True and request["add_generation_prompt"] is False
    else:
        assert final == {"role": "assistant", "content": DELIVERED, "prefix": True}
        assert "continue_final_message" not in request
    assert spec_errors("openai", "CreateChatCompletionRequest", request) == []
    return request


def _billed(rescuer: FaultProvider, prompt_estimate: int) -> tuple[int, int]:
    """(input, output) tokens of the whole answer: the interrupted attempt's prompt (estimated: its usage never
    came) and delivered text (estimated), plus what the fallback reported for the continuation."""
    request = _continuation_of(rescuer)
    continued = usage_of(request["messages"], ANSWER[len(DELIVERED) :])
    delivered = len(DELIVERED) // CHARS_PER_TOKEN
    return prompt_estimate + continued["prompt_tokens"], delivered + continued["completion_tokens"]


@pytest.mark.parametrize(("fault", "shape"), [("cut", "prefix"), ("cut", "vllm"), ("stall", "prefix")])
async def test_a_messages_stream_through_the_chat_translation_is_continued_as_one_message(
    tmp_path: Path, fault: str, shape: str
) -> None:
    body = {"model": "chat", "max_tokens": 400, "messages": [{"role": "user", "content": PROMPT}]}
    async with _route(tmp_path, fault, shape) as (base, primary, rescuer):
        client = anthropic.AsyncAnthropic(base_url=base, api_key=APP_KEY, max_retries=0)
        for armed in (False, True):
            if armed:
                _arm(primary, rescuer)
            kinds: list[str] = []
            async with client.messages.stream(**body) as stream:
                async for event in stream:
                    kinds.append(event.type)
                final = await stream.get_final_message()
        await client.close()
        assert "".join(b.text for b in final.content if b.type == "text") == ANSWER
        assert final.stop_reason == "end_turn"
        assert [k for k in kinds if k != "text"] == [
            "message_start",
            "content_block_start",
            *["content_block_delta"] * len(ANSWER.split(" ")),
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert "gpt-primary" in final.id  # the message the app started on
        continuation = _continuation(rescuer, shape)
        assert continuation["messages"][0] == {"role": "user", "content": PROMPT}  # the translated prompt
        assert len(_apps(primary)) == 1  # the broken stream is not retried from the start
        prompt = MESSAGES.parse(body).tokens_in
        assert (final.usage.input_tokens, final.usage.output_tokens) == _billed(rescuer, prompt)


@pytest.mark.parametrize(("fault", "shape"), [("cut", "prefix"), ("cut", "vllm"), ("stall", "prefix")])
async def test_a_responses_stream_through_the_chat_translation_is_continued_as_one_response(
    tmp_path: Path, fault: str, shape: str
) -> None:
    async with _route(tmp_path, fault, shape) as (base, primary, rescuer):
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-app", max_retries=0)
        for armed in (False, True):
            if armed:
                _arm(primary, rescuer)
            events: list[dict[str, Any]] = []
            async with client.responses.stream(model="chat", input=PROMPT) as stream:
                async for event in stream:
                    events.append(event.model_dump(mode="json", exclude_unset=True, warnings=False))
                final = await stream.get_final_response()
        await client.close()
        assert final.output_text == ANSWER and final.status == "completed"
        kinds = [e["type"] for e in events]
        assert kinds == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            *["response.output_text.delta"] * len(ANSWER.split(" ")),
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert {e["item_id"] for e in events if "item_id" in e} == {events[2]["item"]["id"]}
        assert events[-4]["text"] == events[-3]["part"]["text"] == ANSWER
        assert final.id == events[0]["response"]["id"] and final.model == "gpt-primary"
        assert [item.id for item in final.output] == [events[2]["item"]["id"]]
        for event in events:
            assert responses_event_errors(event) == []
        _continuation(rescuer, shape)
        assert len(_apps(primary)) == 1
        prompt = RESPONSES.parse({"model": "chat", "input": PROMPT}).tokens_in
        usage = final.usage
        assert usage is not None
        assert (usage.input_tokens, usage.output_tokens) == _billed(rescuer, prompt)
        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
