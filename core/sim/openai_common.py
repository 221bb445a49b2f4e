"""Pieces every simulated OpenAI API shares: the model a request names, generated text, usage, finish."""

from __future__ import annotations

import re
from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import Completion, dump

DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings|completions)$")
"""Azure OpenAI's per-deployment paths: the deployment stands in for `model`."""


def body_and_model(request: Request, payload: Any) -> tuple[dict[str, Any], str] | str:
    """The request body and the model it names (`model`, or on Azure the deployment in the path), or why
    the request is invalid."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    match = DEPLOYMENT.match(request.path)
    model = payload.get("model") or (match.group(1) if match else None)
    if not isinstance(model, str) or not model:
        return "you must provide a model parameter"
    return payload, model


def text(tokens: int) -> str:
    return " ".join(["token"] * tokens)


def finish_reason(completion: Completion) -> str:
    if completion.truncated:
        return "length"
    return "tool_calls" if completion.tool is not None else "stop"


def usage(completion: Completion) -> dict[str, Any]:
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def event(value: dict[str, Any]) -> bytes:
    return b"data: " + dump(value) + b"\n\n"
