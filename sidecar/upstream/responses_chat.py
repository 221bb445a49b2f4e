"""OpenAI Responses in, chat completions upstream: stateless requests translated, answers turned back.

What chat cannot carry faithfully is `lacks()`: server state (previous_response_id, conversation, store,
background, prompt templates, item references), built-in tools, reasoning summaries and items, `include`,
and the like. Those requests go to a backend that serves the Responses API natively, or get a 400 naming
the parameter. An absent `store` is taken as false: a translated response is never stored, and says so
(`"store": false`), so an app that later names it in previous_response_id gets the backend's 404.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llmroute.model import Api
from llmroute.sidecar.upstream.errors import UpstreamError, bad_body, invalid_request
from llmroute.sidecar.upstream.openai import answer_doc
from llmroute.sidecar.upstream.responses_chat_stream import ChatToResponsesStream
from llmroute.sidecar.upstream.responses_object import (
    call_item,
    ids,
    member,
    message_item,
    reasoning_tokens,
    resource,
    status_of,
    usage_object,
)
from llmroute.sidecar.upstream.usage import Completion, Usage

_STATEFUL = ("previous_response_id", "conversation", "prompt")
"""Parameters naming state a Responses server keeps: chat has none of it."""
_SAME_NAME = (
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "service_tier",
    "user",
    "safety_identifier",
    "prompt_cache_key",
)
"""Parameters chat completions takes under the same name and meaning."""


class Untranslatable(Exception):
    """A request part chat completions has no faithful counterpart for (a candidate filter, not an error)."""


class ResponsesToChat:
    """OpenAI Responses in, chat completions upstream."""

    inbound: Api = "responses"
    translates = True
    upstream: Api = "chat"

    def lacks(self, request: dict[str, Any]) -> str | None:
        """What of `request` chat completions cannot carry: the translation itself decides, so the two agree.
        A malformed request is not lacking anything: encode() answers it with a 400."""
        try:
            to_chat_request(request, "probe")
        except Untranslatable as missing:
            return str(missing)
        except UpstreamError:  # malformed: encode() raises the 400 that says how
            return None
        return None

    def encode(self, request: dict[str, Any], model: str, *, stream: bool) -> bytes:
        """The chat completions body for the app's Responses body (streams always ask for usage)."""
        try:
            body = to_chat_request(request, model)
        except Untranslatable as missing:  # lacks() filtered this backend out; reached only if bypassed
            raise invalid_request(f"this backend cannot carry {missing}") from None
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body, separators=(",", ":")).encode()

    def decode(self, status: int, body: bytes, model: str, request: dict[str, Any]) -> Completion:
        """The chat completion as a Responses `response` object."""
        doc = answer_doc(status, body)
        choices = doc.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else None
        if choice is None:
            raise bad_body(status, "no choices")
        usage = Usage.from_openai(doc.get("usage"))
        message = member(choice, "message")
        state, incomplete = status_of(choice.get("finish_reason"))
        stem = ids(doc.get("id"))
        output: list[dict[str, Any]] = []
        text, refusal = message.get("content"), message.get("refusal")
        if text or refusal or not message.get("tool_calls"):  # an empty answer is still a message
            output.append(message_item(stem, text or "", refusal, state))
        for index, call in enumerate(message.get("tool_calls") or ()):
            function = member(call, "function") if isinstance(call, dict) else {}
            if function:
                arguments = function.get("arguments")
                output.append(
                    call_item(stem, index, call.get("id"), function.get("name"), str(arguments or ""), "completed")
                )
        raw_usage = doc.get("usage")
        answer = resource(
            request,
            stem=stem,
            created=doc["created"] if isinstance(doc.get("created"), int) else int(time.time()),
            model=str(doc.get("model") or model),
            status=state,
            output=output,
            usage=usage_object(usage, reasoning_tokens(raw_usage)),
            incomplete=incomplete,
            service_tier=doc.get("service_tier"),
        )
        return Completion(json.dumps(answer, separators=(",", ":")).encode(), usage)

    def translator(self, request: dict[str, Any], model: str) -> ChatToResponsesStream:
        """chat.completion.chunk events in, Responses events out."""
        return ChatToResponsesStream(request, model)


RESPONSES_TO_CHAT = ResponsesToChat()


def to_chat_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat completions body (without `stream`) for a Responses body. Raises Untranslatable for what chat
    cannot carry faithfully and UpstreamError (400) for a malformed request."""
    _check_stateless(request)
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        if instructions:
            messages.append({"role": "system", "content": instructions})
    elif instructions is not None:
        raise Untranslatable("instructions given as input items")
    items = request.get("input")
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for item in items:
            _add_item(messages, item)
    else:
        raise invalid_request("input is required: a string or an array of input items")
    body: dict[str, Any] = {"model": model, "messages": messages}
    for name in _SAME_NAME:
        if request.get(name) is not None:
            body[name] = request[name]
    if request.get("max_output_tokens") is not None:
        body["max_completion_tokens"] = request["max_output_tokens"]
    reasoning = request.get("reasoning")
    if isinstance(reasoning, dict):
        if reasoning.get("summary") is not None or reasoning.get("generate_summary") is not None:
            raise Untranslatable("reasoning.summary (chat completions return no reasoning summary)")
        if reasoning.get("effort") is not None:
            body["reasoning_effort"] = reasoning["effort"]
    _add_text(body, request.get("text"))
    tools = request.get("tools")
    if tools:
        body["tools"] = [_tool(t) for t in tools]
        if request.get("tool_choice") is not None:
            body["tool_choice"] = _tool_choice(request["tool_choice"])
        if isinstance(request.get("parallel_tool_calls"), bool):
            body["parallel_tool_calls"] = request["parallel_tool_calls"]
    elif request.get("tool_choice") not in (None, "none", "auto"):
        raise invalid_request("tool_choice needs tools")
    return body


def _check_stateless(request: dict[str, Any]) -> None:
    """Raise Untranslatable for anything that needs a Responses server or has no chat counterpart."""
    for name in _STATEFUL:
        if request.get(name) is not None:
            raise Untranslatable(f"{name} (state only a Responses API backend keeps)")
    if request.get("store") is True:
        raise Untranslatable("store: true (only a Responses API backend stores responses)")
    if request.get("background") is True:
        raise Untranslatable("background: true (only a Responses API backend runs responses in the background)")
    if request.get("include"):
        raise Untranslatable("include (chat completions return none of these extras)")
    if request.get("max_tool_calls") is not None:
        raise Untranslatable("max_tool_calls")
    if request.get("top_logprobs"):
        raise Untranslatable("top_logprobs")
    if request.get("truncation") not in (None, "disabled"):
        raise Untranslatable("truncation: auto")


def _add_item(messages: list[dict[str, Any]], item: Any) -> None:
    """Append one input item as chat messages (function calls join the assistant turn they follow)."""
    if not isinstance(item, dict):
        raise invalid_request("each input item must be an object")
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role == "assistant":
            messages.append(_assistant(item.get("content")))
        elif role in ("user", "system", "developer"):
            messages.append({"role": role, "content": _user_content(item.get("content"), role)})
        else:
            raise invalid_request(f"unsupported message role {role!r}")
    elif kind == "function_call":
        call = {
            "id": item.get("call_id"),
            "type": "function",
            "function": {"name": item.get("name"), "arguments": item.get("arguments") or ""},
        }
        if not isinstance(call["id"], str) or not isinstance(item.get("name"), str):
            raise invalid_request("function_call items need call_id and name")
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise invalid_request("function_call_output items need call_id")
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _tool_output(item.get("output"))})
    else:
        raise Untranslatable(f"input items of type {kind!r}")


def _user_content(content: Any, role: str) -> str | list[dict[str, Any]]:
    """A user, system or developer message's content: text and (for users) images."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request("message content must be a string or an array of content parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "input_text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and role == "user":
            parts.append(_image(part))
        else:
            raise Untranslatable(f"{role} content parts of type {kind!r}")
    if role != "user":  # chat system messages take text only: join the parts
        return "".join(p["text"] for p in parts)
    return parts


def _image(part: dict[str, Any]) -> dict[str, Any]:
    """An image_url part for an input_image given by URL (a file_id names a stored file: not carried)."""
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise Untranslatable("input_image by file_id (a file only the Responses API backend stores)")
    image: dict[str, Any] = {"url": url}
    if part.get("detail") is not None:
        image["detail"] = part["detail"]
    return {"type": "image_url", "image_url": image}


def _assistant(content: Any) -> dict[str, Any]:
    """An assistant turn from earlier output: output_text parts become its text, a refusal its refusal."""
    message: dict[str, Any] = {"role": "assistant"}
    if isinstance(content, str):
        message["content"] = content
        return message
    if not isinstance(content, list):
        raise invalid_request("message content must be a string or an array of content parts")
    texts: list[str] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("output_text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            message["refusal"] = part["refusal"]
        else:
            raise Untranslatable(f"assistant content parts of type {kind!r}")
    if texts:
        message["content"] = "".join(texts)
    return message


def _tool_output(output: Any) -> str | list[dict[str, Any]]:
    """A function_call_output's output: a string, or text parts (chat tool messages take only text)."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise invalid_request("function_call_output.output must be a string or an array of content parts")
    parts = []
    for part in output:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "input_text" or not isinstance(part.get("text"), str):
            raise Untranslatable(f"function_call_output parts of type {kind!r}")
        parts.append({"type": "text", "text": part["text"]})
    return parts


def _tool(tool: Any) -> dict[str, Any]:
    """A chat function tool; `strict` defaults to true as in the Responses API (chat's default is false)."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind != "function":
        raise Untranslatable(f"tools of type {kind!r} (chat completions take function tools only)")
    if not isinstance(tool.get("name"), str):
        raise invalid_request("function tools need a name")
    function: dict[str, Any] = {"name": tool["name"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    if tool.get("parameters") is not None:
        function["parameters"] = tool["parameters"]
    function["strict"] = tool.get("strict") if isinstance(tool.get("strict"), bool) else True
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise Untranslatable(f"tool_choice {choice!r} (chat completions choose among function tools only)")


def _add_text(body: dict[str, Any], text: Any) -> None:
    """text.format as response_format, text.verbosity as verbosity."""
    if not isinstance(text, dict):
        return
    if text.get("verbosity") is not None:
        body["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt is None or kind == "text":
        return
    if kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        assert isinstance(fmt, dict)
        schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise Untranslatable(f"text.format of type {kind!r}")
