"""Provider faults with a right answer: prompts too long for a backend, and a failure that accounts for every
backend of the route."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from llmroute.sim import Behavior, Latency

from .harness import running

FAST = Behavior(latency=Latency.fixed(0.01))
LONG = "word " * 400  # about 2,000 bytes: 500 tokens as the sim counts, 500 as the sidecar estimates


async def test_a_backend_whose_declared_window_is_too_small_is_skipped_up_front(tmp_path: Path) -> None:
    extra = {"small": {"contextWindow": 100}, "large": {"contextWindow": 200_000}}
    async with running(
        tmp_path, {"small": FAST, "large": FAST}, spec={"strategy": "ordered"}, backend_extra=extra
    ) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-backend"] == "large"
        assert raw.headers["x-llmroute-attempts"] == "1"
        assert h.sims["small"].stats.requests == 0
    async with running(tmp_path, {"small": FAST}, backend_extra={"small": {"contextWindow": 100}}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": LONG}])
        assert caught.value.code == "context_length_exceeded"
        assert "small: context window of 100 tokens is smaller than the prompt" in caught.value.message
        assert h.sims["small"].stats.requests == 0


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_context_length_exceeded_goes_to_a_larger_backend_never_the_same_again(tmp_path: Path, kind: str) -> None:
    # The tight backend declares no window; its provider's own 400 (OpenAI's code, Anthropic's "prompt is too
    # long") sends the request to the roomy one, whatever retryOn says, instead of back to the app.
    tight = Behavior(latency=Latency.fixed(0.01), context_window=100)
    spec = {"strategy": "ordered", "retry": {"attempts": 2, "retryOn": ["5xx"]}}
    async with running(tmp_path, {"tight": (kind, tight), "roomy": FAST}, spec=spec) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": LONG}]
        )
        assert raw.headers["x-llmroute-backend"] == "roomy"
        assert raw.headers["x-llmroute-attempts"] == "2"
        assert h.sims["tight"].stats.requests == 1  # tried once, never again within the call
        # A short prompt still goes to the first backend: a context-length refusal says nothing of its health.
        short = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "hi"}]
        )
        assert short.headers["x-llmroute-backend"] == "tight"


async def test_a_prompt_too_long_for_every_backend_gets_the_providers_own_400(tmp_path: Path) -> None:
    tight = Behavior(latency=Latency.fixed(0.01), context_window=100)
    async with running(tmp_path, {"tight": tight}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().chat.completions.create(model="chat", messages=[{"role": "user", "content": LONG}])
        assert caught.value.code == "context_length_exceeded"
        assert "maximum context length is 100 tokens" in caught.value.message


async def test_the_503_accounts_for_every_backend_once(tmp_path: Path) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(500,))
    backends = {"a": broken, "b": broken, "c": FAST}
    extra = {"a": {"capabilities": ["tools"]}, "b": {"capabilities": ["tools"]}}  # c has no tools
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    async with running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h:
        with pytest.raises(openai.InternalServerError) as caught:
            await h.client().chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "x"}],
                tools=tools,  # type: ignore[arg-type]
            )
        assert caught.value.status_code == 503
        message = caught.value.message
        assert "a: backend answered 500" in message
        assert "b: backend answered 500" in message
        assert "c: skipped, does not support tools" in message
        for name in ("a", "b", "c"):
            assert message.count(f"{name}: ") == 1, message
