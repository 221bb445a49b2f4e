"""The Responses API's `response` object and output items, for answers translated from chat completions.

One builder for both the JSON answer and the snapshots the stream carries (response.created, .completed),
so the two never disagree. Request parameters are echoed back as the Responses API does.
"""

from __future__ import annotations

import time
from typing import Any

from llmroute.sidecar.upstream.usage import Usage

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
"""Chat finish reasons that leave a response `incomplete`, and the reason the Responses API gives."""


def member(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """`doc[key]` when it is an object, else an empty one (upstream answers are read defensively)."""
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def status_of(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    """The response status and incomplete_details for a chat finish_reason."""
    reason = INCOMPLETE.get(finish_reason) if isinstance(finish_reason, str) else None
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def ids(chat_id: Any) -> str:
    """The id stem shared by a response and its items, from the upstream chat completion's id."""
    return str(chat_id or "").removeprefix("chatcmpl-") or f"{time.time_ns():x}"


def message_item(stem: str, text: str, refusal: str | None, status: str) -> dict[str, Any]:
    """An assistant `message` output item: one output_text part (and a refusal part when refused)."""
    content: list[dict[str, Any]] = []
    if text or not refusal:
        content.append(text_part(text))
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": f"msg_{stem}", "status": status, "role": "assistant", "content": content}


def text_part(text: str) -> dict[str, Any]:
    """An output_text content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(stem: str, index: int, call_id: Any, name: Any, arguments: str, status: str) -> dict[str, Any]:
    """A `function_call` output item for chat tool call number `index`."""
    return {
        "type": "function_call",
        "id": f"fc_{stem}_{index}",
        "call_id": str(call_id or f"call_{stem}_{index}"),
        "name": str(name or ""),
        "arguments": arguments,
        "status": status,
    }


def reasoning_tokens(usage: Any) -> int:
    """completion_tokens_details.reasoning_tokens of a chat usage object, else 0."""
    details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
    value = details.get("reasoning_tokens") if isinstance(details, dict) else None
    return value if isinstance(value, int) and value > 0 else 0


def usage_object(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    """Usage in the Responses API's words."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.get("name"),
        "description": tool.get("description"),
        "parameters": tool.get("parameters"),
        "strict": tool.get("strict") if isinstance(tool.get("strict"), bool) else True,
    }


def resource(
    request: dict[str, Any],
    *,
    stem: str,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete: dict[str, str] | None = None,
    service_tier: Any = None,
) -> dict[str, Any]:
    """A `response` object for `request` (its parameters echoed) with this status, output and usage."""
    reasoning = request.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    text = request.get("text")
    text_format = text.get("format") if isinstance(text, dict) else None
    text_field: dict[str, Any] = {"format": text_format if isinstance(text_format, dict) else {"type": "text"}}
    if isinstance(text, dict) and text.get("verbosity") is not None:
        text_field["verbosity"] = text["verbosity"]
    finished = status in ("completed", "incomplete")
    return {
        "id": f"resp_{stem}",
        "object": "response",
        "created_at": created,
        "completed_at": int(time.time()) if status == "completed" else None,
        "status": status,
        "incomplete_details": incomplete,
        "model": model,
        "previous_response_id": None,
        "instructions": request.get("instructions"),
        "output": output,
        "error": None,
        "tools": [_tool(t) for t in request.get("tools") or ()],
        "tool_choice": request.get("tool_choice") or "auto",
        "truncation": "disabled",
        "parallel_tool_calls": request.get("parallel_tool_calls") is not False,
        "text": text_field,
        "top_p": _number(request.get("top_p"), 1.0),
        "presence_penalty": _number(request.get("presence_penalty"), 0.0),
        "frequency_penalty": _number(request.get("frequency_penalty"), 0.0),
        "top_logprobs": 0,
        "temperature": _number(request.get("temperature"), 1.0),
        "reasoning": {"effort": effort, "summary": None},
        "usage": usage if finished else None,
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "store": False,
        "background": False,
        "service_tier": service_tier if isinstance(service_tier, str) else request.get("service_tier") or "default",
        "metadata": request.get("metadata") or {},
        "safety_identifier": request.get("safety_identifier"),
        "prompt_cache_key": request.get("prompt_cache_key"),
    }


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default
