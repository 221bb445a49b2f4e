"""The app: one request with the official SDK of its API (openai for chat completions and Responses, anthropic
for Messages), JSON or streamed, under the app's deadline, and what it received (text, error, model, usage),
as an app reading the SDK's results would see them."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai

from bench.faults.catalogue import DEADLINE_S
from bench.faults.score import Received
from bench.faults.wire import APP_MAX_TOKENS

QUESTION = "Tell me what the lighthouse keeper did that night."
"""The app's one prompt, in each API the only user message (the Responses `input`)."""

Client = openai.AsyncOpenAI | anthropic.AsyncAnthropic


@dataclass
class _Got:
    """What the app has read so far."""

    text: list[str] = field(default_factory=list)
    model: str = ""
    usage: tuple[int, int] | None = None
    error: str = ""
    """An error the stream announced in an event without the SDK raising it."""


async def _chat(client: Any, model: str, stream: bool, headers: dict[str, str], got: _Got) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    if not stream:
        answer = await client.chat.completions.create(model=model, messages=messages, extra_headers=headers)
        got.model = answer.model
        got.text.append(answer.choices[0].message.content or "")
        if answer.usage is not None:
            got.usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
        return
    chunks = await client.chat.completions.create(
        model=model, messages=messages, stream=True, stream_options={"include_usage": True}, extra_headers=headers
    )
    async for chunk in chunks:
        got.model = chunk.model or got.model
        got.text += [c.delta.content for c in chunk.choices if c.delta and c.delta.content]
        if chunk.usage is not None:
            got.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)


async def _messages(client: Any, model: str, stream: bool, headers: dict[str, str], got: _Got) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    request = {"model": model, "max_tokens": APP_MAX_TOKENS, "messages": messages, "extra_headers": headers}
    if not stream:
        answer = await client.messages.create(**request)
        got.model = answer.model
        got.text += [block.text for block in answer.content if block.type == "text"]
        got.usage = (answer.usage.input_tokens, answer.usage.output_tokens)
        return
    tokens_in = 0
    async for event in await client.messages.create(**request, stream=True):
        if event.type == "message_start":
            got.model, tokens_in = event.message.model, event.message.usage.input_tokens
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            got.text.append(event.delta.text)
        elif event.type == "message_delta":
            # message_delta repeats input_tokens only in newer API versions; message_start always has them
            got.usage = (getattr(event.usage, "input_tokens", None) or tokens_in, event.usage.output_tokens)


async def _responses(client: Any, model: str, stream: bool, headers: dict[str, str], got: _Got) -> None:
    if not stream:
        answer = await client.responses.create(model=model, input=QUESTION, extra_headers=headers)
        got.model, got.text = answer.model, [answer.output_text]
        if answer.usage is not None:
            got.usage = (answer.usage.input_tokens, answer.usage.output_tokens)
        return
    async for event in await client.responses.create(model=model, input=QUESTION, stream=True, extra_headers=headers):
        if event.type == "response.created":
            got.model = event.response.model
        elif event.type == "response.output_text.delta":
            got.text.append(event.delta)
        elif event.type in ("response.completed", "response.incomplete", "response.failed"):
            got.model = event.response.model
            usage = event.response.usage
            got.usage = None if usage is None else (usage.input_tokens, usage.output_tokens)
            if event.type != "response.completed":
                got.error = f"{event.type}: {event.response.error or event.response.incomplete_details}"
        elif event.type == "error":
            got.error = f"error event: {event.message}"


Reader = Callable[[Any, str, bool, dict[str, str], _Got], Awaitable[None]]
READERS: dict[str, Reader] = {"chat": _chat, "messages": _messages, "responses": _responses}
"""How the app calls each API with its SDK and reads the outcome."""


def client(api: str, root: str, *, timeout: float, retries: int) -> Client:
    """The app's SDK client for `api` on a server at `root` (scheme, host and port)."""
    if api == "messages":
        return anthropic.AsyncAnthropic(base_url=root, api_key="sk-bench", timeout=timeout, max_retries=retries)
    return openai.AsyncOpenAI(base_url=f"{root}/v1", api_key="sk-bench", timeout=timeout, max_retries=retries)


async def ask(api: str, client: Client, model: str, stream: bool) -> Received:
    """Send one request and wait at most DEADLINE_S for its whole outcome. A stream counts as complete when
    the SDK's iterator ends without raising (and without an error event), as an app that reads it to the end
    would take it. Each request carries its own `traceparent`, so a proxy's log can say what it did for it."""
    trace = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    start = time.monotonic()
    got = _Got()
    try:
        async with asyncio.timeout(DEADLINE_S):
            await READERS[api](client, model, stream, headers, got)
    except TimeoutError:
        return Received(time.monotonic() - start, "".join(got.text), "deadline", timed_out=True, trace_id=trace)
    except Exception as error:  # whatever the SDK raises is what the app gets
        status = getattr(error, "status_code", None)
        message = f"{type(error).__name__}: {error}".replace("\n", " ")
        return Received(time.monotonic() - start, "".join(got.text), message, status, model=got.model, trace_id=trace)
    received = Received(time.monotonic() - start, "".join(got.text), got.error, model=got.model, usage=got.usage)
    return dataclasses.replace(received, trace_id=trace)
