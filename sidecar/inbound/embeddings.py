"""POST /v1/embeddings: OpenAI embeddings, JSON only (native backends only; one embedding model per route)."""

from __future__ import annotations

from typing import Any

from llmroute.model import Api
from llmroute.sidecar.inbound.base import Inbound, Parsed, estimate_tokens, invalid, require_model


class Embeddings(Inbound):
    api: Api = "embeddings"
    paths = ("/v1/embeddings", "/embeddings")
    shadow = {"model": "probe", "input": "ping"}

    def parse(self, body: dict[str, Any]) -> Parsed:
        model = require_model(body)
        text = body.get("input")
        if not isinstance(text, str | list) or not text:
            raise invalid("'input' is required: a string, an array of strings, or token arrays")
        if body.get("stream"):
            raise invalid("the embeddings API does not stream; leave 'stream' out")
        return Parsed(model=model, stream=False, needs=frozenset(), tokens_in=estimate_tokens(text), tokens_out=0)


EMBEDDINGS = Embeddings()
