"""The OpenAI embeddings format: one small deterministic vector per input, usage in prompt tokens."""

from __future__ import annotations

import base64
import struct
from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import ChatRequest, Completion, dump
from llmroute.sim.openai_common import body_and_model

DIMENSIONS = 8
"""Vector length: enough to look like an embedding, small enough to cost nothing in benchmarks."""


class EmbeddingsFormat:
    """POST .../embeddings: JSON only."""

    id_prefix = ""
    generates = False

    def parse(self, request: Request, payload: Any) -> ChatRequest | str:
        checked = body_and_model(request, payload)
        if isinstance(checked, str):
            return checked
        payload, model = checked
        inputs = payload.get("input")
        if isinstance(inputs, str) and inputs:
            count = 1
        elif isinstance(inputs, list) and inputs:
            count = 1 if all(isinstance(i, int) for i in inputs) else len(inputs)  # one token array, or many
        else:
            return "'input' must be a non-empty string or array"
        return ChatRequest(model, False, None, False, inputs=count, base64=payload.get("encoding_format") == "base64")

    def completion_body(self, completion: Completion) -> bytes:
        floats = [round(0.1 * (i + 1), 3) for i in range(DIMENSIONS)]
        vector: list[float] | str = floats
        if completion.base64:
            vector = base64.b64encode(struct.pack(f"<{DIMENSIONS}f", *floats)).decode()
        data = [{"object": "embedding", "index": i, "embedding": vector} for i in range(completion.inputs)]
        prompt = completion.prompt_tokens
        return dump(
            {
                "object": "list",
                "data": data,
                "model": completion.model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
            }
        )

    # parse() never asks for a stream: the embeddings API has none.
    def stream_start(self, completion: Completion) -> bytes:
        raise NotImplementedError("embeddings do not stream")

    def stream_token(self, completion: Completion, text: str) -> bytes:
        raise NotImplementedError("embeddings do not stream")

    def stream_end(self, completion: Completion, include_usage: bool) -> bytes:
        raise NotImplementedError("embeddings do not stream")

    def stream_error(self, message: str) -> bytes | None:
        raise NotImplementedError("embeddings do not stream")


EMBEDDINGS = EmbeddingsFormat()
