"""Simulated providers, driven by the clients real applications use (openai SDK, httpx)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from llmroute.sim import Behavior, Latency, Schedule, SimConfigError, SimProvider, load_config
from llmroute.sim.provider import latency_draws

from .specs import spec_errors

StartSim = Callable[..., Awaitable[SimProvider]]
MESSAGES: list[Any] = [{"role": "user", "content": "hello"}]
ANTHROPIC_HEADERS = {"x-api-key": "ak", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    providers: list[SimProvider] = []

    async def start(*args: Any, **kwargs: Any) -> SimProvider:
        provider = SimProvider(*args, **kwargs)
        await provider.start()
        providers.append(provider)
        return provider

    yield start
    for provider in providers:
        await provider.stop()


def client(sim: SimProvider, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url, api_key="sk-test", max_retries=0, **options)


async def test_openai_json_completion_with_usage(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(output_tokens=5, cached_tokens=2, api_key="sk-test"))
    response = await client(sim).chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=MESSAGES, max_tokens=3
    )
    completion = response.parse()
    assert response.headers["x-sim-backend"] == "primary"
    assert completion.id.startswith("chatcmpl-primary-")
    assert completion.model == "gpt-4.1"
    assert completion.choices[0].message.content == "token token token"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 2
    assert sim.stats.last_json["max_tokens"] == 3


async def test_openai_stream_with_usage_chunk(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(output_tokens=4))
    stream = await client(sim).chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "token token token token"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_models_endpoint_is_a_cheap_probe(start_sim: StartSim) -> None:
    sim = await start_sim("primary", models=("gpt-4.1", "gpt-4.1-mini"))
    models = await client(sim).models.list()
    assert [m.id for m in models.data] == ["gpt-4.1", "gpt-4.1-mini"]
    async with httpx.AsyncClient() as http:
        stats = (await http.get(f"http://127.0.0.1:{sim.port}/sim/stats")).json()
    assert stats["by_path"] == {"GET /v1/models": 1}
    assert stats["last_request"]["headers"]["authorization"] == "***"


async def test_azure_deployment_path_and_api_key(start_sim: StartSim) -> None:
    sim = await start_sim("azure", "azure-openai", Behavior(api_key="az-key"))
    azure = openai.AsyncAzureOpenAI(azure_endpoint=sim.url, api_key="az-key", api_version="2024-06-01", max_retries=0)
    completion = await azure.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert completion.model == "my-deployment"
    assert sim.stats.last_path == "/openai/deployments/my-deployment/chat/completions"
    assert sim.stats.last_headers["api-key"] == "az-key"
    wrong = openai.AsyncAzureOpenAI(azure_endpoint=sim.url, api_key="no", api_version="2024-06-01", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as failure:
        await wrong.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert failure.value.body == {"code": "401", "message": "Incorrect API key provided."}


async def test_anthropic_messages_json(start_sim: StartSim) -> None:
    sim = await start_sim("claude", "anthropic", Behavior(output_tokens=3, cached_tokens=1, api_key="ak"))
    async with httpx.AsyncClient(base_url=sim.url, headers=ANTHROPIC_HEADERS) as http:
        body = {"model": "claude-x", "max_tokens": 10, "messages": MESSAGES}
        message = (await http.post("/messages", json=body)).json()
        missing = await http.post("/messages", json={"model": "claude-x", "messages": MESSAGES})
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "token token token", "citations": None}]
    assert (message["model"], message["stop_reason"]) == ("claude-x", "end_turn")
    assert message["usage"]["output_tokens"] == 3
    assert message["usage"]["cache_read_input_tokens"] == 1
    assert missing.status_code == 400
    assert missing.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}


async def test_anthropic_stream_events(start_sim: StartSim) -> None:
    sim = await start_sim("claude", "anthropic", Behavior(output_tokens=3))
    events: list[tuple[str, dict[str, Any]]] = []
    body = {"model": "claude-x", "max_tokens": 2, "messages": MESSAGES, "stream": True}
    async with (
        httpx.AsyncClient(base_url=sim.url, headers=ANTHROPIC_HEADERS) as http,
        http.stream("POST", "/messages", json=body) as response,
    ):
        name = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    names = [n for n, _ in events if n != "ping"]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == n for n, data in events)
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "token token"
    delta = next(d for n, d in events if n == "message_delta")
    assert (delta["delta"]["stop_reason"], delta["usage"]["output_tokens"]) == ("max_tokens", 2)


async def test_schedule_switches_phase(start_sim: StartSim) -> None:
    # Wide margins: the first answer has 1 s to come back before the switch (it takes milliseconds on an idle
    # machine), and only the second must wait the 0.6 s of the new phase.
    schedule = Schedule(((0.0, Behavior()), (1.0, Behavior(latency=Latency.fixed(0.6)))))
    sim = await start_sim("primary", schedule=schedule)
    api = client(sim)
    started = time.perf_counter()
    await api.chat.completions.create(model="m", messages=MESSAGES)
    fast = time.perf_counter() - started
    await asyncio.sleep(1.0 - fast)
    started = time.perf_counter()
    await api.chat.completions.create(model="m", messages=MESSAGES)
    slow = time.perf_counter() - started
    assert fast < 0.6 <= slow


async def test_rate_limit_has_retry_after(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(rate_limit_rate=1.0, retry_after=2.5))
    with pytest.raises(openai.RateLimitError) as failure:
        await client(sim).chat.completions.create(model="m", messages=MESSAGES)
    headers = failure.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("3", "2500")
    assert failure.value.code == "rate_limit_exceeded"


async def test_error_rate_and_statuses(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(error_rate=0.5, error_statuses=(502, 503)), seed=1)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        statuses = [
            (await http.post("/chat/completions", json={"model": "m", "messages": MESSAGES})).status_code
            for _ in range(200)
        ]
    failures = [s for s in statuses if s != 200]
    assert set(failures) == {502, 503}
    assert 70 <= len(failures) <= 130
    assert sim.stats.by_outcome["error"] == len(failures)


async def test_hang_is_left_by_a_client_timeout(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(hang_rate=1.0))
    with pytest.raises(openai.APITimeoutError):
        await client(sim, timeout=0.2).chat.completions.create(model="m", messages=MESSAGES)
    assert sim.stats.by_outcome["hang"] == 1


async def test_reset_is_a_connection_error(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(reset_rate=1.0))
    with pytest.raises(openai.APIConnectionError):
        await client(sim).chat.completions.create(model="m", messages=MESSAGES)


async def test_openai_stream_breaks_after_first_chunk(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(midstream_failure_rate=1.0))
    stream = await client(sim).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError) as failure:
        async for chunk in stream:
            received.append(chunk)
    assert "incomplete chunked read" in str(failure.value.__cause__)  # body cut short, not a reset
    assert received and received[0].choices[0].delta.role == "assistant"


async def test_anthropic_stream_error_event_after_first_chunk(start_sim: StartSim) -> None:
    sim = await start_sim("claude", "anthropic", Behavior(midstream_failure_rate=1.0))
    body = {"model": "c", "max_tokens": 5, "messages": MESSAGES, "stream": True}
    async with httpx.AsyncClient(base_url=sim.url, headers=ANTHROPIC_HEADERS) as http:
        text = (await http.post("/messages", json=body)).text
    assert text.index("event: message_start") < text.index("event: error")
    assert '"type":"overloaded_error"' in text and "message_stop" not in text


async def test_wrong_key_is_401_in_provider_shape(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(api_key="right"))
    with pytest.raises(openai.AuthenticationError) as failure:
        await client(sim).chat.completions.create(model="m", messages=MESSAGES)
    assert failure.value.code == "invalid_api_key"
    claude = await start_sim("claude", "anthropic", Behavior(api_key="right"))
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{claude.url}/models", headers=ANTHROPIC_HEADERS)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert sim.stats.by_outcome["unauthorized"] == claude.stats.by_outcome["unauthorized"] == 1


async def test_a_reasoning_model_refuses_max_tokens_as_openai_does(start_sim: StartSim) -> None:
    sim = await start_sim("o3", behavior=Behavior(output_tokens=4, unsupported_params=("max_tokens",)))
    with pytest.raises(openai.BadRequestError) as failure:
        await client(sim).chat.completions.create(model="o3", messages=MESSAGES, max_tokens=2)
    assert (failure.value.code, failure.value.param) == ("unsupported_parameter", "max_tokens")
    assert "Use 'max_completion_tokens' instead." in failure.value.message
    answer = await client(sim).chat.completions.create(model="o3", messages=MESSAGES, max_completion_tokens=2)
    assert answer.usage is not None and answer.usage.completion_tokens == 2
    assert (sim.stats.by_outcome["unsupported_parameter"], sim.stats.by_outcome["ok"]) == (1, 1)


async def test_a_json_answer_can_take_longer_the_more_it_writes(start_sim: StartSim) -> None:
    sim = await start_sim("primary", behavior=Behavior(output_tokens=10, json_token_delay=0.1))
    started = time.monotonic()
    long = await client(sim).chat.completions.create(model="m", messages=MESSAGES)
    writing_long = time.monotonic() - started
    started = time.monotonic()
    short = await client(sim).chat.completions.create(model="m", messages=MESSAGES, max_tokens=1)
    writing_short = time.monotonic() - started
    assert long.usage is not None and short.usage is not None
    assert (long.usage.completion_tokens, short.usage.completion_tokens) == (10, 1)
    assert writing_long >= 0.95 > writing_short  # 10 tokens at 0.1 s, against one


def test_config_file_with_schedules(tmp_path: Path) -> None:
    config = tmp_path / "sim.yaml"
    config.write_text(
        "seed: 3\n"
        "backends:\n"
        "  - {name: a, kind: openai, port: 0, behavior: {latency: {median: 300ms, p95: 800ms}}}\n"
        "  - name: b\n"
        "    kind: anthropic\n"
        "    schedule:\n"
        "      - {at: 0s, behavior: {latency: 0.3, error_rate: 0.1}}\n"
        "      - {at: 20s, behavior: {latency: 8.5s, unsupported_params: [max_tokens], json_token_delay: 20ms}}\n"
    )
    a, b = load_config(config)
    assert a.provider.schedule.at(0).latency == Latency.lognormal(0.3, 0.8)
    late = b.provider.schedule.at(25)
    assert (late.latency, late.error_rate) == (Latency.fixed(8.5), 0.1)  # later phases change what they name
    assert (late.unsupported_params, late.json_token_delay) == (("max_tokens",), 0.02)
    config.write_text("backends:\n  - {name: a, schedule: [{at: 0, behavior: {latncy: 1}}]}\n")
    with pytest.raises(SimConfigError, match=r"backends\[0\]\.schedule\[0\]\.behavior\.latncy: unknown field"):
        load_config(config)
    config.write_text("backends:\n  - {name: a, behavior: {unsupported_params: max_tokens}}\n")
    with pytest.raises(SimConfigError, match=r"unsupported_params: a list of request field names is required"):
        load_config(config)


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}


async def test_anthropic_sim_calls_tools_and_counts_tokens(start_sim: StartSim) -> None:
    sim = await start_sim("claude", "anthropic", Behavior(output_tokens=2))
    claude = anthropic.AsyncAnthropic(base_url=sim.url.removesuffix("/v1"), api_key="ak", max_retries=0)
    tools: Any = [{"name": "weather", "input_schema": WEATHER_SCHEMA}]
    asked: Any = [{"role": "user", "content": "weather?"}]
    called = await claude.messages.create(model="claude-x", max_tokens=10, messages=asked, tools=tools)
    assert spec_errors("anthropic", "Message", called.model_dump()) == []
    assert called.stop_reason == "tool_use"
    use = called.content[-1]
    assert use.type == "tool_use" and (use.name, use.input) == ("weather", {"city": "sim", "days": 1})
    answered = [*asked, {"role": "assistant", "content": [use.model_dump()]}]
    answered.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sun"}]})
    final = await claude.messages.create(model="claude-x", max_tokens=10, messages=answered, tools=tools)
    assert final.stop_reason == "end_turn" and [b.type for b in final.content] == ["text"]
    async with claude.messages.stream(model="claude-x", max_tokens=10, messages=asked, tools=tools) as stream:
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[-1].input == {"city": "sim", "days": 1}
    counted = await claude.messages.count_tokens(model="claude-x", messages=asked)
    assert counted.input_tokens == len(sim.stats.last_body) // 4
    assert sim.stats.last_path == "/v1/messages/count_tokens"
    await claude.close()


async def test_openai_sim_calls_tools(start_sim: StartSim) -> None:
    sim = await start_sim("gpt", "openai", Behavior(output_tokens=2))
    tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": WEATHER_SCHEMA}}]
    completion = await client(sim).chat.completions.create(model="m", messages=MESSAGES, tools=tools)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.type == "function" and json.loads(call.function.arguments) == {"city": "sim", "days": 1}
    replied: Any = [*MESSAGES, choice.message.model_dump(exclude_none=True)]
    replied.append({"role": "tool", "tool_call_id": call.id, "content": "sun"})
    after = await client(sim).chat.completions.create(model="m", messages=replied, tools=tools)
    assert after.choices[0].finish_reason == "stop" and not after.choices[0].message.tool_calls
    stream = await client(sim).chat.completions.create(model="m", messages=MESSAGES, tools=tools, stream=True)
    arguments = ""
    async for chunk in stream:
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert delta_call.function is not None
            arguments += delta_call.function.arguments or ""
    assert json.loads(arguments) == {"city": "sim", "days": 1}


def test_a_keyed_request_draws_the_same_latency_on_every_provider() -> None:
    # Two arms of a benchmark send the same keyed requests; whatever else each provider answered before, a
    # key is as slow on one as on the other, so the arms differ only in where they sent it.
    latency = Latency.lognormal(0.3, 0.9)
    body = b'{"messages": [{"role": "user", "content": "Where is my order? [sim-draw 4:2:17]"}]}'
    one, other = random.Random(1), random.Random(2)
    other.random()
    assert latency.sample(latency_draws(body, one)) == latency.sample(latency_draws(body, other))
    another = body.replace(b"4:2:17", b"4:2:18")
    assert latency.sample(latency_draws(body, one)) != latency.sample(latency_draws(another, one))
    own = random.Random(3)
    assert latency_draws(b'{"messages": []}', own) is own  # unkeyed requests (probes) use the provider's
