"""The Responses API through the sidecar with the official openai SDK: natively on backends that serve it,
translated to chat completions elsewhere; routed, costed and failed over like chat, every request and
answer valid against the published specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from llmroute.sim import Behavior, Latency

from ..specs import responses_event_errors, spec_errors
from ..upstream.conftest import RawServer, Received, Responder, sse_events
from .harness import running, sidecar_for

FAST = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
PRICE = {"price": {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0}}
NATIVE: dict[str, Any] = {"apis": ["responses"], **PRICE}
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "weather",
    "description": "Weather by city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def cost_of(usage: Any) -> float:
    return (usage.input_tokens * 1000.0 + usage.output_tokens * 2000.0) / 1e6


def sse_docs(text: str) -> list[dict[str, Any]]:
    """The JSON of each event of a raw Responses stream (comments skipped)."""
    docs = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            docs.append(json.loads("\n".join(data)))
    return docs


@pytest.mark.parametrize(
    ("kind", "native"),
    [("openai", True), ("azure-openai", True), ("openai", False)],
    ids=["native", "azure-native", "translated"],
)
async def test_json_stream_and_stream_helper(tmp_path: Path, kind: str, native: bool) -> None:
    extra = {"gpt": NATIVE if native else PRICE}
    async with running(tmp_path, {"gpt": (kind, FAST)}, backend_extra=extra) as h:
        client = h.client()
        raw = await client.responses.with_raw_response.create(
            model="chat", instructions="Be brief.", input="Say hi", max_output_tokens=16, store=False
        )
        response = raw.parse()
        assert response.output_text == "token token token token"
        assert response.status == "completed"
        assert response.usage is not None and response.usage.output_tokens == 4
        assert raw.headers["x-llmroute-backend"] == "gpt"
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(cost_of(response.usage))
        sim = h.sims["gpt"]
        sent = sim.stats.last_json
        if native:
            assert sim.stats.last_path == ("/openai/responses" if kind == "azure-openai" else "/v1/responses")
            assert sent["input"] == "Say hi" and sent["model"] == "gpt-model"
            assert spec_errors("responses", "CreateResponseBody", sent) == []
        else:
            assert sim.stats.last_path == "/v1/chat/completions"
            assert sent["messages"] == [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hi"},
            ]
            assert sent["max_completion_tokens"] == 16
            assert spec_errors("openai", "CreateChatCompletionRequest", sent) == []

        kinds, final = [], None
        async with await client.responses.create(model="chat", input="Say hi", stream=True) as stream:
            async for event in stream:
                kinds.append(event.type)
                if event.type == "response.completed":
                    final = event.response
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds.count("response.output_text.delta") == 4 and kinds[-1] == "response.completed"
        assert final is not None and final.output_text == "token token token token"
        assert final.usage is not None and final.usage.input_tokens > 0

        async with client.responses.stream(model="chat", input="Say hi") as helper:
            deltas = [e.delta async for e in helper if e.type == "response.output_text.delta"]
            done = await helper.get_final_response()
        assert "".join(deltas) == done.output_text == "token token token token"

        async with h.http() as http:
            plain = await http.post("/responses", json={"model": "chat", "input": "x", "stream": True})
        docs = sse_docs(plain.text)
        assert all(responses_event_errors(doc) == [] for doc in docs)
        assert [d["sequence_number"] for d in docs] == list(range(len(docs)))
        # The Responses stream has no [DONE]: after response.completed only the cost comment follows.
        assert "[DONE]" not in plain.text
        assert plain.text.rstrip().rsplit("\n", 1)[-1].startswith(": x-llmroute-cost-usd=")
        assert float(plain.text.rsplit("x-llmroute-cost-usd=", 1)[1]) == pytest.approx(
            (docs[-1]["response"]["usage"]["input_tokens"] * 1000.0 + 4 * 2000.0) / 1e6
        )


async def test_max_output_tokens_cut_is_an_incomplete_response(tmp_path: Path) -> None:
    async with running(tmp_path, {"gpt": FAST}) as h:
        response = await h.client().responses.create(model="chat", input="Long story", max_output_tokens=16)
        assert response.status == "completed"  # 4 tokens fit
        h.sims["gpt"].set_behavior(Behavior(output_tokens=40))
        cut = await h.client().responses.create(model="chat", input="Long story", max_output_tokens=16)
        assert cut.status == "incomplete"
        assert cut.incomplete_details is not None and cut.incomplete_details.reason == "max_output_tokens"


def chat_answer(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-t1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "up",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "refusal": None, **message}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 40, "completion_tokens": 10, "total_tokens": 50},
    }


TOOL_CALL = {"id": "call_7", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}


def tool_stream() -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "chatcmpl-t2",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up",
            "choices": [choice],
        }

    start = {"index": 0, "id": "call_8", "type": "function", "function": {"name": "weather", "arguments": ""}}
    usage = {"prompt_tokens": 30, "completion_tokens": 6, "total_tokens": 36}
    return sse_events(
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [start]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":"Rome"}'}}]}),
        chunk({}, "tool_calls"),
        {
            "id": "chatcmpl-t2",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "up",
            "choices": [],
            "usage": usage,
        },
        "[DONE]",
    )


async def test_tool_calls_round_trip_through_the_translation(tmp_path: Path) -> None:
    async def reply(received: Received, res: Responder) -> None:
        body = received.json()
        if body.get("stream"):
            await res.sse(tool_stream())
        elif body["messages"][-1]["role"] == "tool":
            await res.json(200, chat_answer({"content": "It rains in Oslo."}, "stop"))
        else:
            await res.json(200, chat_answer({"content": None, "tool_calls": [TOOL_CALL]}, "tool_calls"))

    server = await RawServer(reply).start()
    spec = {
        "models": ["chat"],
        "backends": [
            {
                "name": "compat",
                "provider": "openai",
                "url": server.base_url,
                "model": "up",
                "capabilities": ["tools"],
                **PRICE,
            }
        ],
    }
    try:
        async with sidecar_for(tmp_path, spec) as sidecar:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{sidecar.app_server.port}/v1", api_key="x", max_retries=0
            )
            question: list[Any] = [{"type": "message", "role": "user", "content": "Weather in Oslo?"}]
            raw = await client.responses.with_raw_response.create(model="chat", input=question, tools=[WEATHER])
            first = raw.parse()
            call = first.output[0]
            assert call.type == "function_call"
            assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_7", "weather", {"city": "Oslo"})
            assert spec_errors("responses", "ResponseResource", json.loads(raw.content)) == []

            follow_up = [
                *question,
                *first.output,
                {"type": "function_call_output", "call_id": "call_7", "output": "rain"},
            ]
            second = await client.responses.create(model="chat", input=follow_up, tools=[WEATHER])
            assert second.output_text == "It rains in Oslo."
            sent = server.received[1].json()
            assert sent["messages"][1:] == [
                {"role": "assistant", "tool_calls": [TOOL_CALL]},
                {"role": "tool", "tool_call_id": "call_7", "content": "rain"},
            ]
            assert sent["tools"][0]["function"]["name"] == "weather"
            assert spec_errors("openai", "CreateChatCompletionRequest", sent) == []

            async with client.responses.stream(model="chat", input=question, tools=[WEATHER]) as stream:
                argument_deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
                final = await stream.get_final_response()
            assert argument_deltas == ['{"city":"Rome"}']
            streamed_call = final.output[0]
            assert streamed_call.type == "function_call" and streamed_call.call_id == "call_8"
            assert final.usage is not None and (final.usage.input_tokens, final.usage.output_tokens) == (30, 6)
            await client.close()
    finally:
        await server.stop()


async def test_state_on_a_chat_only_route_is_a_400_naming_it(tmp_path: Path) -> None:
    async with running(tmp_path, {"gpt": FAST}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().responses.create(model="chat", input="again", previous_response_id="resp_123")
        assert caught.value.status_code == 400
        assert caught.value.code == "unsupported_parameter"
        assert "previous_response_id" in caught.value.message
        with pytest.raises(openai.BadRequestError, match="store: true"):
            await h.client().responses.create(model="chat", input="x", store=True)
        assert h.sims["gpt"].stats.requests == 0


async def test_state_goes_to_the_native_backend_of_a_mixed_route(tmp_path: Path) -> None:
    extra = {"chat-only": PRICE, "native": NATIVE}
    async with running(
        tmp_path, {"chat-only": FAST, "native": FAST}, spec={"strategy": "ordered"}, backend_extra=extra
    ) as h:
        raw = await h.client().responses.with_raw_response.create(
            model="chat", input="again", previous_response_id="resp_123"
        )
        assert raw.headers["x-llmroute-backend"] == "native"
        assert h.sims["native"].stats.last_json["previous_response_id"] == "resp_123"
        assert h.sims["chat-only"].stats.requests == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_native_backend_fails_over_to_a_translated_one(tmp_path: Path, stream: bool) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(500,))
    extra = {"native": NATIVE, "compat": PRICE}
    spec = {"strategy": "ordered"}
    async with running(tmp_path, {"native": broken, "compat": FAST}, spec=spec, backend_extra=extra) as h:
        async with h.http() as http:
            answer = await http.post("/responses", json={"model": "chat", "input": "hi", "stream": stream})
        assert answer.status_code == 200
        assert answer.headers["x-llmroute-backend"] == "compat"
        assert answer.headers["x-llmroute-attempts"] == "2"
        assert h.sims["native"].stats.last_path == "/v1/responses"
        assert h.sims["compat"].stats.last_path == "/v1/chat/completions"
        final = sse_docs(answer.text)[-1]["response"] if stream else answer.json()
        assert final["status"] == "completed"
        assert final["output"][0]["content"][0]["text"] == "token token token token"


async def test_errors_in_the_responses_shape(tmp_path: Path) -> None:
    cut = Behavior(latency=Latency.fixed(0.01), output_tokens=8, midstream_failure_rate=1.0)
    async with running(tmp_path, {"native": cut}, backend_extra={"native": NATIVE}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().responses.create(model="chat", input=[])
        assert "input" in caught.value.message

        with pytest.raises(openai.APIError, match="failed mid-stream"):
            async with h.client().responses.stream(model="chat", input="hi") as stream:
                async for _ in stream:
                    pass

        async with h.http() as http:
            answer = await http.post("/responses", json={"model": "chat", "input": "hi", "stream": True})
        docs = sse_docs(answer.text)
        error = docs[-1]
        assert [d["type"] for d in docs[:-1]][-1] == "response.output_text.delta"
        assert error["type"] == "error" and "failed mid-stream" in error["message"]
        assert error["error"]["message"] == error["message"]
        assert responses_event_errors(error) == []
        assert error["sequence_number"] == docs[-2]["sequence_number"] + 1
        assert "response.completed" not in answer.text


async def test_a_route_of_anthropic_backends_cannot_serve_the_responses_api(tmp_path: Path) -> None:
    async with running(tmp_path, {"claude": ("anthropic", FAST)}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().responses.create(model="chat", input="hi")
        assert caught.value.code == "unsupported_api" and "responses" in caught.value.message
        assert h.sims["claude"].stats.requests == 0
