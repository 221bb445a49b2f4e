"""POST /v1/completions: OpenAI's legacy text completions, JSON and SSE (native backends only)."""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound.base import (
    Inbound,
    Parsed,
    estimate_tokens,
    invalid,
    output_limit,
    require_model,
    streams,
)
from llmroute.sidecar.upstream.base import DONE


class Completions(Inbound):
    api: Api = "completions"
    paths = ("/v1/completions", "/completions")
    shadow = {"model": "probe", "prompt": "ping", "max_tokens": 16}
    done = DONE

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list):
            raise invalid("'prompt' is required: a string, an array of strings, or token arrays")
        needs = {"n>1"} if isinstance(body.get("n"), int) and body["n"] > 1 else set()
        if body.get("logprobs"):
            needs.add("logprobs")
        return Parsed(
            model=model,
            stream=streams(body),
            needs=frozenset(needs),
            tokens_in=estimate_tokens(prompt),
            tokens_out=output_limit(body, "max_tokens") if "max_tokens" in body else 16,  # the API's default
        )


COMPLETIONS = Completions()
