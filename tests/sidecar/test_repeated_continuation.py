"""A continuation that breaks off in turn is continued again, for chat, Messages and Responses alike: read with
the official SDKs through a real sidecar, against the fault-injecting provider of bench/faults (real sockets).

The primary is cut after AFTER words; the chat prefill fallback's first continuation is cut after AGAIN more
words, and its second continues to the end. The app must get the whole answer once, in order, in one message of
its API, with usage that adds up what all three attempts were billed (the quotas counting the same); each
continuation must carry all the text the app had as its prefill. When no further attempt is allowed (the
route's retry attempts, a continuation silent past the request's timeout), the app gets its API's error event
naming both interruptions and why the second was not continued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from llmroute.model import Api
from llmroute.model.policy import Policy, RateLimit
from llmroute.sidecar.inbound import BY_API
from llmroute.sidecar.inbound.base import CHARS_PER_TOKEN

from ..specs import responses_event_errors
from ..tools import REPO
from .harness import APP_KEY, Harness, route_doc, sidecar_for, sidecar_process
from .test_policy_admission import enforce, used
from .test_translated_continuation import WHOLE_MESSAGE, WHOLE_RESPONSE

if str(REPO) not in sys.path:  # bench/ runs from the source tree (python -m bench.faults)
    sys.path.insert(0, str(REPO))

from bench.faults.provider import ANSWER, Action, FaultProvider, Kind, usage_of

PROMPT = "Tell me what the lighthouse keeper did that night."
AFTER = 10
"""Words the primary sends before it is cut."""
AGAIN = 5
"""Words the first continuation sends before it is cut in turn."""
WORDS = [w + " " for w in ANSWER.split(" ")[:-1]] + [ANSWER.split(" ")[-1]]
FIRST = "".join(WORDS[:AFTER])
"""What the app has when the primary breaks off: the first continuation's prefill."""
SECOND = "".join(WORDS[: AFTER + AGAIN])
"""What the app has when the first continuation breaks off: the second continuation's prefill."""
BODIES: dict[str, dict[str, Any]] = {
    "chat": {
        "model": "chat",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "messages": {"model": "chat", "max_tokens": 400, "messages": [{"role": "user", "content": PROMPT}]},
    "responses": {"model": "chat", "input": PROMPT},
}


@dataclass
class Read:
    """What the app got from one stream, through its SDK."""

    text: str
    kinds: list[str]
    usage: tuple[int, int] | None  # (input, output) tokens, None when the stream ended in an error
    error: str | None = None


@contextlib.asynccontextmanager
async def _providers(second: Kind = "ok") -> AsyncIterator[tuple[FaultProvider, FaultProvider]]:
    """A primary cut after AFTER words once armed (`_arm`), and a fallback whose first continuation is cut after
    AGAIN words and whose next ones do what `second` says."""

    def fallback_script(_n: int, _t: float) -> Action:
        continued = sum(1 for seen in rescuer.seen if seen.prefill)  # before this request
        return Action("cut", after=AGAIN) if continued == 0 else Action(second, after=0)

    primary = FaultProvider("gpt-primary", lambda n, t: Action("cut", after=AFTER))
    rescuer = FaultProvider("gpt-fallback", fallback_script)
    await primary.start()
    await rescuer.start()
    try:
        yield primary, rescuer
    finally:
        await primary.stop()
        await rescuer.stop()


def _spec(primary: FaultProvider, rescuer: FaultProvider, **extra: Any) -> dict[str, Any]:
    """The route: the primary, then the fallback as a chat prefill backend (an OpenAI-compatible API taking
    DeepSeek's `prefix: true`), `extra` on top."""
    fallback = {"name": "fallback", "provider": "openai", "url": rescuer.url, "model": "gpt-fallback"}
    return {
        "models": ["chat"],
        "strategy": "ordered",
        "backends": [
            {"name": "primary", "provider": "openai", "url": primary.url, "model": "gpt-primary"},
            {**fallback, "capabilities": ["prefill"]},
        ],
        "priorities": {"normal": {"timeout": "10s"}},
        **extra,
    }


@contextlib.asynccontextmanager
async def _route(
    tmp_path: Path, second: Kind = "ok", **extra: Any
) -> AsyncIterator[tuple[Harness, FaultProvider, FaultProvider]]:
    """`_providers` behind a sidecar routing `_spec`: the sidecar (in a Harness without simulators) and the two."""
    async with _providers(second) as (primary, rescuer):
        spec = _spec(primary, rescuer, **extra)
        async with sidecar_for(tmp_path, spec) as sidecar:
            yield Harness({}, tmp_path / "route.yaml", sidecar, spec), primary, rescuer


def _arm(primary: FaultProvider, rescuer: FaultProvider) -> None:
    """After the app's first, healthy request: both providers follow their scripts from now on, and their
    request logs start afresh."""
    for provider in (primary, rescuer):
        provider.arm(time.monotonic())
        provider.requests.clear()


def _apps(provider: FaultProvider) -> list[dict[str, Any]]:
    """The app's requests a provider saw (shadow probes set max_tokens)."""
    return [r for r in provider.requests if "max_tokens" not in r]


async def _read(base: str, api: Api, headers: dict[str, str] | None = None) -> Read:
    """One streamed answer of `api` read with its official SDK."""
    body = BODIES[api]
    options: dict[str, Any] = {"max_retries": 0, "default_headers": headers or {}}
    parts: list[str] = []
    kinds: list[str] = []
    usage: tuple[int, int] | None = None
    try:
        if api == "messages":
            client = anthropic.AsyncAnthropic(base_url=base, api_key=APP_KEY, **options)
            async with client, client.messages.stream(**body) as stream:
                async for event in stream:
                    kinds.append(event.type)
                    if event.type == "text":
                        parts.append(event.text)
                final = await stream.get_final_message()
                usage = (final.usage.input_tokens, final.usage.output_tokens)
            return Read("".join(parts), [k for k in kinds if k != "text"], usage)
        openai_client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-app", **options)
        async with openai_client:
            if api == "chat":
                chunks = await openai_client.chat.completions.create(**body)
                async for chunk in chunks:
                    kinds.append(chunk.id)
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                return Read("".join(parts), kinds, usage)
            async with openai_client.responses.stream(**body) as events:
                seen = []
                async for item in events:
                    kinds.append(item.type)
                    seen.append(item.model_dump(mode="json", exclude_unset=True, warnings=False))
                    if item.type == "response.output_text.delta":
                        parts.append(item.delta)
                response = await events.get_final_response()
                for doc in seen:  # checked once read: the spec check is slow, and the sidecar shares this loop
                    assert responses_event_errors(doc) == []
                assert response.output_text == "".join(parts)  # the final response carries the whole text
                assert response.usage is not None
                usage = (response.usage.input_tokens, response.usage.output_tokens)
            return Read("".join(parts), kinds, usage)
    except (openai.APIError, anthropic.APIError) as error:
        return Read("".join(parts), kinds, None, str(error))


def _prefill(request: dict[str, Any]) -> Any:
    """The final assistant message of a continuation request."""
    return request["messages"][-1]


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
async def test_a_continuation_that_breaks_off_is_continued_again_into_one_whole_answer(
    tmp_path: Path, api: Api
) -> None:
    async with _route(tmp_path) as (h, primary, rescuer):
        base = h.base_url.removesuffix("/v1")
        assert (await _read(base, api)).text == ANSWER  # healthy
        _arm(primary, rescuer)
        enforce(h, Policy("default", "shop-limits", rate_limits=(RateLimit("tpm", 100, 1_000_000),)))
        read = await _read(base, api)
        assert read.usage is not None
        assert used(h, "tpm", "tokens") == (sum(read.usage), 0.0)  # the quota counts what the app was told
        continued = h.sidecar.metrics.registry.get_sample_value(
            "llmroute_stream_continuations_total", {"route": "chat"}
        )
    assert read.error is None
    assert read.text == ANSWER  # every word once, in order
    if api == "messages":
        assert read.kinds == WHOLE_MESSAGE
    elif api == "responses":
        assert read.kinds == WHOLE_RESPONSE
    else:
        assert len(set(read.kinds)) == 1  # one completion id throughout
    # What each backend saw: the primary the app's request once; the fallback two continuations, each with
    # all the text the app had as its prefill (DeepSeek's shape).
    assert len(_apps(primary)) == 1
    first, second = _apps(rescuer)
    assert continued == 2
    assert _prefill(first) == {"role": "assistant", "content": FIRST, "prefix": True}
    assert _prefill(second) == {"role": "assistant", "content": SECOND, "prefix": True}
    assert first["messages"][:-1] == second["messages"][:-1]
    # Usage: the primary's prompt (estimated) and the text it delivered, the first continuation's prompt
    # (estimated: the app's prompt and the prefill) and the text it delivered, and the second continuation's
    # own usage as its provider reported it.
    prompt = BY_API[api].parse(BODIES[api]).tokens_in
    last = usage_of(second["messages"], ANSWER[len(SECOND) :])
    delivered = len(FIRST) // CHARS_PER_TOKEN, (len(SECOND) - len(FIRST)) // CHARS_PER_TOKEN
    assert read.usage == (
        prompt + (prompt + delivered[0]) + last["prompt_tokens"],
        delivered[0] + delivered[1] + last["completion_tokens"],
    )


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
async def test_a_second_break_past_the_routes_retry_attempts_ends_with_the_error_event_naming_both(
    tmp_path: Path, api: Api
) -> None:
    # One retry attempt: the first continuation uses it, so the second break is not continued. The app has
    # every word up to the second break once, then its API's error event, which its SDK raises.
    async with _route(tmp_path, retry={"attempts": 1}) as (h, primary, rescuer):
        base = h.base_url.removesuffix("/v1")
        assert (await _read(base, api)).text == ANSWER
        _arm(primary, rescuer)
        read = await _read(base, api)
    assert read.text == SECOND and read.usage is None
    assert read.error is not None
    assert "backend fallback failed mid-stream: connection lost" in read.error
    assert "it was continuing the answer after backend primary failed mid-stream: connection lost" in read.error
    assert "not continued: the route's 1 retry attempts were used" in read.error
    assert len(_apps(primary)) == 1 and len(_apps(rescuer)) == 1


async def test_a_second_continuation_silent_past_the_requests_timeout_ends_with_the_error_event(
    tmp_path: Path,
) -> None:
    # The app gives its request 3 s to a first chunk (x-llmroute-timeout-ms); each continuation's first chunk is
    # held to the same. The second continuation sends its headers and then nothing: after 3 s the app gets the
    # error event, not the provider's 60 s of silence.
    async with _route(tmp_path, second="slow_first") as (h, primary, rescuer):
        base = h.base_url.removesuffix("/v1")
        assert (await _read(base, "messages")).text == ANSWER
        _arm(primary, rescuer)
        started = time.monotonic()
        read = await _read(base, "messages", {"x-llmroute-timeout-ms": "3000"})
        waited = time.monotonic() - started
    assert read.text == SECOND and read.error is not None
    assert "not continued: fallback failed to continue it: no answer within" in read.error
    assert 3.0 <= waited < 40.0  # the timeout, with a wide margin for a loaded machine; the provider holds 60 s
    assert len(_apps(rescuer)) == 2


PRICES = (
    {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0},  # the primary: $0.001 a prompt token, $0.002 an answer's
    {"inputPerMTok": 3000.0, "outputPerMTok": 4000.0},  # the fallback
)


async def test_the_access_log_line_of_a_continued_stream_says_what_the_app_was_billed(tmp_path: Path) -> None:
    # `llmroute sidecar` as a real process, its access log on stdout. A chat stream cut in the original and in
    # the first continuation: its line gives the whole answer's tokens and cost, the usage and cost the app
    # was told, not only the last attempt's.
    out = tmp_path / "stdout"
    async with _providers() as (primary, rescuer):
        spec = _spec(primary, rescuer)
        for backend, price in zip(spec["backends"], PRICES, strict=True):
            backend["price"] = price
        routes = tmp_path / "route.yaml"
        routes.write_text(yaml.safe_dump(route_doc(spec)))
        with out.open("wb") as stdout:
            async with sidecar_process("--routes", str(routes), stdout=stdout) as (process, port, _admin, _log):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http:
                    for armed in (False, True):
                        if armed:
                            _arm(primary, rescuer)
                        async with http.stream("POST", "/chat/completions", json=BODIES["chat"]) as response:
                            raw = (await response.aread()).decode()
                process.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(process.wait, 30) == 0
        second = _apps(rescuer)[-1]
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == ANSWER
    usage = chunks[-1]["usage"]
    cost = re.search(r"^: x-llmroute-cost-usd=([0-9.]+)$", raw, re.MULTILINE)
    assert cost is not None
    # What the three attempts billed, each at its backend's prices: the primary's prompt (estimated) and the
    # text it delivered, the first continuation's likewise, the second's as its provider reported them.
    prompt = BY_API["chat"].parse(BODIES["chat"]).tokens_in
    delivered = len(FIRST) // CHARS_PER_TOKEN, (len(SECOND) - len(FIRST)) // CHARS_PER_TOKEN
    last = usage_of(second["messages"], ANSWER[len(SECOND) :])
    billed = [
        (prompt, delivered[0]),
        (prompt + delivered[0], delivered[1]),
        (last["prompt_tokens"], last["completion_tokens"]),
    ]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == tuple(map(sum, zip(*billed, strict=True)))
    dollars = [PRICES[0], PRICES[1], PRICES[1]]
    whole = sum(
        (i * p["inputPerMTok"] + o * p["outputPerMTok"]) / 1e6 for (i, o), p in zip(billed, dollars, strict=True)
    )
    assert float(cost.group(1)) == pytest.approx(whole, abs=1e-8)

    line = json.loads(out.read_text().splitlines()[-1])
    assert (line["outcome"], line["backend"], line["attempts"]) == ("success", "fallback", 3)
    assert (line["tokens_in"], line["tokens_out"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert line["cost_usd"] == pytest.approx(whole)
