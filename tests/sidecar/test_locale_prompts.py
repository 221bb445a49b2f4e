"""A route's `systemPrompts` by locale: the x-llmroute-locale header picks one for a request that brings no
system prompt of its own, in every inbound API that has system prompts; the app's own always wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmroute.model import RouteInvalid, parse_spec
from llmroute.sim import Behavior, Latency

from .harness import chat_body, running

FAST = Behavior(latency=Latency.fixed(0.01))
PROMPTS = {"systemPrompts": {"vi": "Trả lời bằng tiếng Việt.", "th": "ตอบเป็นภาษาไทย", "en": "Answer in English."}}


async def test_chat_gets_the_locale_prompt_only_when_it_has_no_system_message(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}, spec=PROMPTS) as h, h.http() as http:
        sim = h.sims["primary"]
        await http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-locale": "vi-VN"})
        assert sim.stats.last_json["messages"][0] == {"role": "system", "content": "Trả lời bằng tiếng Việt."}
        assert sim.stats.last_json["messages"][1] == {"role": "user", "content": "hello"}

        own = [{"role": "system", "content": "be terse"}, {"role": "user", "content": "hi"}]
        await http.post("/chat/completions", json=chat_body(messages=own), headers={"x-llmroute-locale": "th"})
        assert sim.stats.last_json["messages"] == own  # never overrides the app's own

        for headers in ({}, {"x-llmroute-locale": "fr"}):  # no header, or a locale the route has no prompt for
            await http.post("/chat/completions", json=chat_body(), headers=headers)
            assert sim.stats.last_json["messages"] == [{"role": "user", "content": "hello"}]


async def test_messages_and_responses_get_it_in_their_own_field(tmp_path: Path) -> None:
    backends = {"claude": ("anthropic", FAST), "gpt": FAST}
    extra = {"gpt": {"apis": ["responses"]}}
    spec = {**PROMPTS, "strategy": "ordered"}
    async with running(tmp_path, backends, spec=spec, backend_extra=extra) as h, h.http() as http:
        headers = {"x-llmroute-locale": "en", "anthropic-version": "2023-06-01"}
        message = {"model": "chat", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        answer = await http.post("/messages", json=message, headers=headers)
        assert answer.status_code == 200
        assert h.sims["claude"].stats.last_json["system"] == "Answer in English."
        answer = await http.post("/messages", json={**message, "system": "mine"}, headers=headers)
        assert h.sims["claude"].stats.last_json["system"] == "mine"

        # Responses: only the gpt backend serves it natively.
        answer = await http.post("/responses", json={"model": "chat", "input": "hi"}, headers=headers)
        assert answer.status_code == 200
        assert h.sims["gpt"].stats.last_json["instructions"] == "Answer in English."
        developer = [{"role": "developer", "content": "mine"}, {"role": "user", "content": "hi"}]
        await http.post("/responses", json={"model": "chat", "input": developer}, headers=headers)
        assert "instructions" not in h.sims["gpt"].stats.last_json


def test_system_prompts_must_be_text() -> None:
    spec = {"models": ["chat"], "backends": [{"name": "a", "provider": "openai", "url": "https://x/v1", "model": "m"}]}
    assert parse_spec({**spec, **PROMPTS}, name="chat", namespace="shop").system_prompts["th"] == "ตอบเป็นภาษาไทย"
    with pytest.raises(RouteInvalid) as invalid:
        parse_spec({**spec, "systemPrompts": {"vi": ""}}, name="chat", namespace="shop")
    assert "spec.systemPrompts.vi" in str(invalid.value)
