"""OpenAI chat.completions in, Anthropic Messages upstream: requests and answers translated."""

from __future__ import annotations

import json
import time
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.upstream.anthropic_stream import AnthropicStream, finish_reason, usage_of
from llmroute.sidecar.upstream.base import json_object, wants_usage
from llmroute.sidecar.upstream.errors import bad_body, error_from_event, invalid_request
from llmroute.sidecar.upstream.usage import Completion

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI apps often leave it out

CARRIED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "stream",
        "stream_options",
        "modalities",
        # Capabilities Anthropic lacks (llmroute.model.spec.PROVIDER_LACKS): checked before any codec.
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
    }
)
"""The chat parameters this translation carries. Any other with a value (seed, penalties, logit_bias,
audio, prediction, store, reasoning_effort, ...) makes the request go to another backend: it is never
quietly dropped. Zero, false and null values change nothing and so do not count."""
_PART_TYPES = frozenset({"text", "image_url"})


class ChatToMessages:
    """OpenAI chat.completions in, Anthropic Messages upstream: requests and answers translated."""

    inbound: Api = "chat"
    translates = True
    upstream: Api = "messages"

    def lacks(self, request: dict[str, Any]) -> str | None:
        """The first chat parameter the Messages API would drop or change."""
        for name, value in request.items():
            if value and name not in CARRIED:
                return name
        temperature = request.get("temperature")
        if isinstance(temperature, int | float) and temperature > 1:
            return "temperature above 1"
        if request.get("modalities") not in (None, ["text"]):
            return "modalities"
        for tool in request.get("tools") or ():
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return "tools (only function tools)"
        for message in request.get("messages") or ():
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                for part in content:
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind not in _PART_TYPES:
                        return f"content parts of type {kind!r}"
        return None

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The Messages request for the app's chat.completions body; UpstreamError(4xx) if malformed."""
        body = to_messages_request(request, model)
        if stream:
            body["stream"] = True
        return json.dumps(body, separators=(",", ":")).encode()

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The Messages answer as an OpenAI chat.completion."""
        doc = json_object(body)
        if doc is None:
            raise bad_body(status, "not a JSON object")
        if doc.get("type") == "error":
            raise error_from_event(doc.get("error"), "in a successful answer")
        content = doc.get("content")
        if not isinstance(content, list):
            raise bad_body(status, "no content")
        usage = usage_of(doc.get("usage"))
        completion = {
            "id": doc.get("id") or "",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": doc.get("model") or model,
            "choices": [
                {
                    "index": 0,
                    "message": from_content(content),
                    "finish_reason": finish_reason(doc.get("stop_reason")),
                    "logprobs": None,
                }
            ],
            "usage": usage.to_openai(),
        }
        return Completion(json.dumps(completion, separators=(",", ":")).encode(), usage)

    def translator(self, request: dict[str, Any], model: str) -> AnthropicStream:
        """Messages stream events in, chat.completion.chunk events out."""
        return AnthropicStream(model, forward_usage=wants_usage(request))


CHAT_TO_MESSAGES = ChatToMessages()


def to_messages_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """Translate an OpenAI chat.completions body to a Messages body (without `stream`)."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    raw = request.get("messages")
    if not isinstance(raw, list):
        raise invalid_request("messages must be a list")
    for message in raw:
        if not isinstance(message, dict):
            raise invalid_request("each message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        elif role == "user":
            _append(messages, "user", _user_blocks(message.get("content")))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_blocks(message))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id"),
                "content": _text_of(message.get("content")),
            }
            _append(messages, "user", [result])
        else:
            raise invalid_request(f"unsupported message role {role!r}")
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        body["system"] = "\n\n".join(s for s in system if s)
    if isinstance(request.get("temperature"), int | float):
        body["temperature"] = request["temperature"]  # lacks() sent anything above 1 elsewhere
    if request.get("top_p") is not None:
        body["top_p"] = request["top_p"]
    stop = request.get("stop")
    if stop:
        body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    tools = request.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools]
    choice = _tool_choice(request.get("tool_choice"), request.get("parallel_tool_calls"))
    if choice is not None and tools:
        body["tool_choice"] = choice
    if isinstance(request.get("user"), str):
        body["metadata"] = {"user_id": request["user"]}
    return body


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add blocks as a turn, merging with the previous turn of the same role (tool results follow tool uses)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _text_of(content: Any) -> str:
    """The text of a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise invalid_request("message content must be a string or a list of parts")


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise invalid_request("user content must be a string or a list of parts")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url")))
        else:
            raise invalid_request(f"content part type {kind!r} is not supported by this backend")
    return blocks


def _image(image_url: Any) -> dict[str, Any]:
    """An image block: data: URLs become base64 sources, http(s) URLs url sources."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise invalid_request("image_url.url must be a string")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise invalid_request("image data URLs must look like data:image/png;base64,...")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise invalid_request("image_url.url must be a data: or http(s) URL")


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    text = _text_of(message.get("content"))
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise invalid_request("tool_calls[].function.arguments must be JSON") from None
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    return blocks


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise invalid_request("only function tools with a name are supported by this backend")
    translated = {
        "name": function["name"],
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    return translated


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    translated: dict[str, Any] | None
    if choice is None:
        translated = {"type": "auto"} if parallel is False else None
    elif choice in ("auto", "none"):
        translated = {"type": choice}
    elif choice == "required":
        translated = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise invalid_request(f"unsupported tool_choice {choice!r}")
    if translated is not None and parallel is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return translated


def from_content(content: list[Any]) -> dict[str, Any]:
    """An OpenAI assistant message from Messages content blocks (text joined, tool_use as tool_calls)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(block.get("text") or "")
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return message
