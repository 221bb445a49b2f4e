"""Anthropic Messages in, OpenAI chat completions upstream: requests and answers translated.

What chat completions cannot say is a candidate filter (`lacks`), never dropped: extended thinking,
thinking blocks in the history, documents and other non-image blocks, images from the Files API, server
tools, top_k, errored tool results, images inside tool results, a final assistant turn to continue
(prefill), and any field this module does not know. `cache_control` is the one thing left out on
purpose: it asks the provider to cache a prefix and does not change the answer; OpenAI-compatible APIs
cache prefixes on their own.
"""

from __future__ import annotations

import json
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.upstream.errors import bad_body, invalid_request
from llmroute.sidecar.upstream.messages_chat_stream import ChatToMessagesStream, message_usage, stop_reason
from llmroute.sidecar.upstream.openai import answer_doc
from llmroute.sidecar.upstream.usage import Completion, Usage

MAX_STOP_SEQUENCES = 4
"""OpenAI takes at most four stop sequences; Anthropic takes more."""

# Request fields with a chat counterpart (or none needed); any other field is one this pair cannot carry.
_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "cache_control",
    }
)
_TOOL_FIELDS = frozenset({"type", "name", "description", "input_schema", "cache_control", "strict"})
_BLOCKS = {
    "user": frozenset({"text", "image", "tool_result"}),
    "assistant": frozenset({"text", "tool_use"}),
}


def _lacks_block(role: str, block: Any) -> str | None:
    """What of one content block chat cannot carry, or None."""
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in _BLOCKS.get(role, frozenset()):
        return f"{kind!r} content blocks in {role} messages"
    if kind == "image":
        source = block.get("source")
        source_type = source.get("type") if isinstance(source, dict) else None
        if source_type not in ("base64", "url"):
            return f"image blocks with a {source_type!r} source"
    if kind == "tool_result":
        if block.get("is_error"):
            return "tool_result blocks with is_error (chat tool messages have no error flag)"
        content = block.get("content")
        if isinstance(content, list) and any(not isinstance(b, dict) or b.get("type") != "text" for b in content):
            return "tool_result content other than text"
    return None


def lacks(request: dict[str, Any]) -> str | None:
    """The first part of a Messages request that chat completions would drop or change, or None."""
    for name in request:
        if name not in _FIELDS:
            return name
    thinking = request.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled":
        return "thinking"
    if request.get("service_tier") not in (None, "auto"):
        return "service_tier"
    stops = request.get("stop_sequences")
    if isinstance(stops, list) and len(stops) > MAX_STOP_SEQUENCES:
        return f"more than {MAX_STOP_SEQUENCES} stop_sequences"
    for tool in request.get("tools") or ():
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            return "server tools (only custom tools)"
        extra = sorted(set(tool) - _TOOL_FIELDS)
        if extra:
            return f"tools[].{extra[0]}"
    messages = request.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            missing = _lacks_block(str(message.get("role")), block)
            if missing is not None:
                return missing
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        return "a final assistant message to continue (prefill)"
    return None


def to_chat_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """Translate a Messages body (one `lacks` passed) to a chat.completions body, without streaming."""
    messages: list[dict[str, Any]] = []
    system = request.get("system")
    if system:
        messages.append({"role": "system", "content": _texts(system, "system")})
    raw = request.get("messages")
    if not isinstance(raw, list):
        raise invalid_request("messages: must be an array")
    for message in raw:
        if not isinstance(message, dict):
            raise invalid_request("messages: each message must be an object")
        role = message.get("role")
        if role == "user":
            messages.extend(_user(message.get("content")))
        elif role == "assistant":
            messages.append(_assistant(message.get("content")))
        else:
            raise invalid_request(f"messages: unsupported role {role!r}")
    body: dict[str, Any] = {"model": model, "messages": messages, "max_completion_tokens": request.get("max_tokens")}
    for name in ("temperature", "top_p"):
        if request.get(name) is not None:
            body[name] = request[name]
    if request.get("stop_sequences"):
        body["stop"] = list(request["stop_sequences"])
    metadata = request.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        body["user"] = metadata["user_id"]
    tools = request.get("tools")
    if tools:
        body["tools"] = [_tool(tool) for tool in tools]
        _tool_choice(request.get("tool_choice"), body)
    return body


def _texts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A string, or text blocks as chat text parts (their cache_control and citations left out)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"{where}: must be a string or an array of text blocks")
    parts = []
    for block in content:
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise invalid_request(f"{where}: only text blocks can be carried here")
        parts.append({"type": "text", "text": block["text"]})
    return parts


def _user(content: Any) -> list[dict[str, Any]]:
    """One user turn: its tool results as tool messages (chat wants them right after the tool calls), then
    its text and images as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise invalid_request("messages: content must be a string or an array of blocks")
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            result = block.get("content")
            text = _texts(result, "tool_result.content") if result is not None else ""
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"))}})
        else:
            parts.append({"type": "text", "text": block.get("text")})
    return [*results, {"role": "user", "content": parts}] if parts else results


def _image_url(source: Any) -> str:
    """A data: URL for a base64 image, the URL itself for a url image."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        return f"data:{source['media_type']};base64,{source['data']}"
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise invalid_request("image: source must be base64 (media_type, data) or url")


def _assistant(content: Any) -> dict[str, Any]:
    """An assistant turn: its text as content, its tool_use blocks as tool_calls."""
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise invalid_request("messages: content must be a string or an array of blocks")
    texts = [{"type": "text", "text": b.get("text")} for b in content if b.get("type") == "text"]
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {}, separators=(",", ":"))},
        }
        for b in content
        if b.get("type") == "tool_use"
    ]
    text: str | list[dict[str, Any]] | None = texts[0]["text"] if len(texts) == 1 else texts or None
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.get("name"), "parameters": tool.get("input_schema")}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    """tool_choice and parallel_tool_calls for Anthropic's tool_choice."""
    if choice is None:
        return
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto" or kind == "none":
        body["tool_choice"] = kind
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    else:
        raise invalid_request(f"tool_choice: unsupported {choice!r}")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        body["parallel_tool_calls"] = False


def to_message(doc: dict[str, Any], model: str, status: int) -> tuple[dict[str, Any], Usage]:
    """A Messages answer (and its usage) from a chat.completion."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
    message = choice.get("message") if choice is not None else None
    if not isinstance(message, dict):
        raise bad_body(status, "no choices[0].message")
    content: list[dict[str, Any]] = []
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text, "citations": None})
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise bad_body(status, "a tool call without a function")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise bad_body(status, "tool call arguments are not JSON") from None
        block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        content.append({**block, "caller": {"type": "direct"}})
    usage = Usage.from_openai(doc.get("usage"))
    reason = "refusal" if message.get("refusal") else stop_reason(choice.get("finish_reason") if choice else None)
    answer = {
        "id": doc.get("id") or "",
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": doc.get("model") or model,
        "stop_reason": reason,
        "stop_sequence": None,
        "stop_details": None,
        "container": None,
        "usage": message_usage(usage),
    }
    return answer, usage


class MessagesToChat:
    """Anthropic Messages in, OpenAI chat.completions upstream."""

    inbound: Api = "messages"
    translates = True
    upstream: Api = "chat"

    def lacks(self, request: dict[str, Any]) -> str | None:
        """What chat completions cannot carry (see the module docstring)."""
        return lacks(request)

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The chat.completions body; streams always ask for the usage chunk."""
        body = to_chat_request(request, model)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body, separators=(",", ":")).encode()

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The chat.completion as a Messages answer."""
        answer, usage = to_message(answer_doc(status, body), model, status)
        return Completion(json.dumps(answer, separators=(",", ":")).encode(), usage)

    def translator(self, request: dict[str, Any], model: str) -> ChatToMessagesStream:
        """chat.completion.chunk events in, Messages stream events out."""
        return ChatToMessagesStream(model)


MESSAGES_TO_CHAT = MessagesToChat()
