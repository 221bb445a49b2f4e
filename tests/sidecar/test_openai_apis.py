"""Embeddings and legacy completions through the sidecar, with the official openai SDK: routed, costed and
failed over like chat, every request and answer valid against OpenAI's published spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from llmroute.sim import Behavior, Latency, SimProvider

from ..specs import spec_errors
from .harness import route_doc, running, sidecar_running

FAST = Behavior(latency=Latency.fixed(0.01))
PRICE = {"price": {"inputPerMTok": 1000.0, "outputPerMTok": 2000.0}}
EMBED: dict[str, Any] = {"apis": ["embeddings"], "model": "embed-3", **PRICE}


async def test_embeddings_for_a_batch_of_inputs_with_cost(tmp_path: Path) -> None:
    async with running(tmp_path, {"embedder": FAST}, backend_extra={"embedder": EMBED}) as h:
        raw = await h.client().embeddings.with_raw_response.create(model="chat", input=["first text", "second"])
        result = raw.parse()
        assert [d.index for d in result.data] == [0, 1]
        assert all(len(d.embedding) == 8 for d in result.data)
        assert raw.headers["x-llmroute-route"] == "chat"
        assert raw.headers["x-llmroute-backend"] == "embedder"
        # Embeddings are priced on their prompt tokens alone.
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(result.usage.prompt_tokens * 1000.0 / 1e6)
        sent = h.sims["embedder"].stats.last_json
        assert sent == {"model": "embed-3", "input": ["first text", "second"], "encoding_format": "base64"}
        assert spec_errors("openai", "CreateEmbeddingRequest", sent) == []
        assert h.sims["embedder"].stats.last_path == "/v1/embeddings"
        async with h.http() as http:
            response = await http.post("/embeddings", json={"model": "chat", "input": "x"})
        assert spec_errors("openai", "CreateEmbeddingResponse", response.json()) == []
        assert response.json()["data"][0]["embedding"] == pytest.approx([0.1 * (i + 1) for i in range(8)])


async def test_embeddings_fail_over_between_backends_of_the_same_model(tmp_path: Path) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0, error_statuses=(500,))
    extra = {"a": EMBED, "b": EMBED}
    async with running(tmp_path, {"a": broken, "b": FAST}, spec={"strategy": "ordered"}, backend_extra=extra) as h:
        raw = await h.client().embeddings.with_raw_response.create(model="chat", input="hello")
        assert raw.headers["x-llmroute-backend"] == "b"
        assert raw.headers["x-llmroute-attempts"] == "2"
        assert h.sims["a"].stats.requests == 1


async def test_legacy_completions_json_and_stream(tmp_path: Path) -> None:
    extra = {"primary": {"apis": ["chat", "completions"], **PRICE}}
    async with running(tmp_path, {"primary": FAST}, backend_extra=extra) as h:
        raw = await h.client().completions.with_raw_response.create(model="chat", prompt="Say hi", max_tokens=3)
        completion = raw.parse()
        assert completion.choices[0].text == "token token token"
        assert completion.choices[0].finish_reason == "length"
        usage = completion.usage
        assert usage is not None
        expected = (usage.prompt_tokens * 1000.0 + usage.completion_tokens * 2000.0) / 1e6
        assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(expected)
        assert spec_errors("openai", "CreateCompletionRequest", h.sims["primary"].stats.last_json) == []
        assert h.sims["primary"].stats.last_path == "/v1/completions"
        async with h.http() as http:
            answer = await http.post("/completions", json={"model": "chat", "prompt": "x", "max_tokens": 2})
        assert spec_errors("openai", "CreateCompletionResponse", answer.json()) == []

        stream = await h.client().completions.create(
            model="chat", prompt="Say hi", max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        pieces, finish, streamed_usage = [], None, None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].text)
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                streamed_usage = chunk.usage
        assert "".join(pieces) == "token token token token"
        assert finish == "length"
        assert streamed_usage is not None and streamed_usage.completion_tokens == 4
        # Upstream is always asked for usage (to count cost), whatever the app asked.
        assert h.sims["primary"].stats.last_json["stream_options"] == {"include_usage": True}


async def test_an_api_no_backend_serves_is_a_400_that_names_route_and_api(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}) as h:
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client().embeddings.create(model="chat", input="x")
        assert caught.value.code == "unsupported_api"
        assert (
            "no backend of route chat can serve this request: primary: serves no embeddings API" in caught.value.message
        )
        with pytest.raises(openai.BadRequestError, match="primary: serves no completions API"):
            await h.client().completions.create(model="chat", prompt="x")
        assert h.sims["primary"].stats.requests == 0


async def test_malformed_requests_of_each_api_are_400s_in_openai_shape(tmp_path: Path) -> None:
    async with running(tmp_path, {"primary": FAST}, backend_extra={"primary": EMBED}) as h, h.http() as http:
        for path, body, message in [
            ("/embeddings", {"model": "chat"}, "'input' is required"),
            ("/embeddings", {"model": "chat", "input": "x", "stream": True}, "does not stream"),
            ("/completions", {"model": "chat"}, "'prompt' is required"),
            ("/embeddings", {"input": "x"}, "'model' is required"),
        ]:
            response = await http.post(path, json=body)
            assert response.status_code == 400, path
            assert message in response.json()["error"]["message"]
        wrong_method = await http.get("/embeddings")
        assert wrong_method.status_code == 405
        assert h.sims["primary"].stats.requests == 0


async def test_routes_naming_one_upstream_with_different_apis_each_keep_their_own(tmp_path: Path) -> None:
    # Two routes point at the same URL and model, one for chat and one for embeddings: each is carried
    # by what its own backend declares, not by whichever route's client was created first.
    sim = SimProvider("shared", "openai", FAST, seed=1)
    await sim.start()
    try:
        backend = {"name": "shared", "provider": "openai", "url": sim.url, "model": "shared-model"}
        routes = [
            route_doc({"models": ["chat"], "backends": [backend]}, name="chat"),
            route_doc({"models": ["embed"], "backends": [{**backend, "apis": ["embeddings"]}]}, name="embed"),
        ]
        route_file = tmp_path / "routes.yaml"
        route_file.write_text(yaml.safe_dump_all(routes))
        async with sidecar_running(["--routes", str(route_file)]) as sidecar:
            base_url = f"http://127.0.0.1:{sidecar.app_server.port}/v1"
            async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
                assert (await client.embeddings.create(model="embed", input="x")).data
                chat = await client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
                assert chat.choices[0].message.content
    finally:
        await sim.stop()
