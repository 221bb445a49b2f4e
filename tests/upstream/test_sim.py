"""The upstream layer against the project's simulated providers (llmroute.sim): every provider, end to end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmroute.model import Backend, SecretValue
from llmroute.sidecar.upstream import CompletionStream, Upstream, UpstreamError
from llmroute.sim import Behavior, SimProvider

PROVIDERS = ["openai", "azure-openai", "anthropic"]
REQUEST: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "Hello " * 100}]}
KEY = "sim-key-0123456789"

Start = Callable[[str, Behavior], Awaitable[Upstream]]
Drain = Callable[[CompletionStream], Awaitable[list[bytes]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """A SimProvider of a kind with a behaviour, and an Upstream pointed at it; both stopped afterwards."""
    running: list[tuple[SimProvider, Upstream]] = []

    async def make(kind: str, behavior: Behavior) -> Upstream:
        sim = SimProvider("sim", kind, behavior, models=("up-model",))  # type: ignore[arg-type]
        await sim.start()
        backend = Backend(name="sim", provider=kind, url=sim.url, model="up-model", api_key=SecretValue(KEY))  # type: ignore[arg-type]
        upstream = Upstream(backend)
        running.append((sim, upstream))
        return upstream

    yield make
    for sim, upstream in running:
        await upstream.aclose()
        await sim.stop()


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_json_and_stream_with_usage(start: Start, drain: Drain, kind: str) -> None:
    upstream = await start(kind, Behavior(output_tokens=5, cached_tokens=40, api_key=KEY))

    completion = await upstream.complete({**REQUEST, "max_tokens": 3}, timeout=5)
    parsed = ChatCompletion.model_validate_json(completion.body)
    assert parsed.choices[0].finish_reason == "length" and parsed.choices[0].message.content
    assert completion.usage.completion_tokens == 3
    assert completion.usage.prompt_tokens > 40 and completion.usage.cached_tokens == 40

    stream = await upstream.stream({**REQUEST, "stream": True, "stream_options": {"include_usage": True}}, timeout=5)
    out = await drain(stream)
    chunks = [ChatCompletionChunk.model_validate_json(e.removeprefix(b"data: ")) for e in out]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == ["token"] * 5
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1 and usage[0].completion_tokens == 5
    assert (stream.usage.completion_tokens, stream.usage.cached_tokens) == (5, 40)

    assert await upstream.probe(timeout=5)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_wrong_key_is_auth(start: Start, kind: str) -> None:
    upstream = await start(kind, Behavior(api_key="another-key"))
    with pytest.raises(UpstreamError) as caught:
        await upstream.complete(REQUEST, timeout=5)
    assert (caught.value.kind, caught.value.status) == ("auth", 401)
    assert json.loads(caught.value.body_for("openai"))["error"]["message"]
    assert not await upstream.probe(timeout=5)


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize(
    ("behavior", "kind_of_failure"),
    [
        (Behavior(rate_limit_rate=1.0, retry_after=2.5), "429"),
        (Behavior(error_rate=1.0, error_statuses=(503,)), "5xx"),
        (Behavior(reset_rate=1.0), "reset"),
        (Behavior(hang_rate=1.0), "timeout"),
    ],
)
async def test_failures_before_the_answer(start: Start, kind: str, behavior: Behavior, kind_of_failure: str) -> None:
    upstream = await start(kind, behavior)
    for call in (upstream.complete, upstream.stream):
        with pytest.raises(UpstreamError) as caught:
            await call({**REQUEST, "stream": call == upstream.stream}, timeout=0.2)
        assert caught.value.kind == kind_of_failure
        if kind_of_failure == "429":
            assert caught.value.retry_after == 2.5


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_failure_after_the_first_chunk_raises_from_the_stream(start: Start, kind: str) -> None:
    upstream = await start(kind, Behavior(midstream_failure_rate=1.0, output_tokens=5))
    stream = await upstream.stream({**REQUEST, "stream": True}, timeout=5)
    got: list[bytes] = []
    with pytest.raises(UpstreamError) as caught:
        async for event in stream:
            got.append(event)
    assert got and b"token" in b"".join(got)
    assert caught.value.kind in ("reset", "5xx")
