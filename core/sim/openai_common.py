"""Pieces every simulated OpenAI API shares: the model a request names, generated text, usage, finish."""

from __future__ import annotations

import re
from typing import Any

from llmroute.http import Request
from llmroute.sim.dialect import Completion, dump

DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings|completions)$")
"""Azure OpenAI's per-deployment paths: the deployment stands in for `model`."""


def model_of(request: Request, payload: dict[str, Any]) -> object:
    """`model` from the body, or on Azure the deployment in the path."""
    match = DEPLOYMENT.match(request.path)
    return payload.get("model") or (match.group(1) if match else None)


def text(tokens: int) -> str:
    return " ".join(["token"] * tokens)


def finish_reason(completion: Completion) -> str:
    return "length" if completion.truncated else "stop"


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
