"""The app: one chat request with the official openai SDK, JSON or streamed, under the app's deadline, and
what it received (text, error, model, usage), as an app reading the SDK's results would see them."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time

import openai
from openai.types.chat import ChatCompletionMessageParam

from bench.faults.catalogue import DEADLINE_S
from bench.faults.score import Received

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me what the lighthouse keeper did that night."}
]


async def ask(client: openai.AsyncOpenAI, model: str, stream: bool) -> Received:
    """Send one request and wait at most DEADLINE_S for its whole outcome. A stream counts as complete when
    the SDK's iterator ends without raising, as an app that reads it to the end would take it. Each request
    carries its own `traceparent`, so a proxy's log can say what it did for it."""
    trace = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    got = await _ask(client, model, stream, headers)
    return dataclasses.replace(got, trace_id=trace)


async def _ask(client: openai.AsyncOpenAI, model: str, stream: bool, headers: dict[str, str]) -> Received:
    start = time.monotonic()
    text: list[str] = []
    answer_model = ""
    usage: tuple[int, int] | None = None
    try:
        async with asyncio.timeout(DEADLINE_S):
            if stream:
                events = await client.chat.completions.create(
                    model=model,
                    messages=PROMPT,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                async for chunk in events:
                    answer_model = chunk.model or answer_model
                    text += [c.delta.content for c in chunk.choices if c.delta and c.delta.content]
                    if chunk.usage is not None:
                        usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            else:
                answer = await client.chat.completions.create(model=model, messages=PROMPT, extra_headers=headers)
                answer_model = answer.model
                text.append(answer.choices[0].message.content or "")
                if answer.usage is not None:
                    usage = (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    except TimeoutError:
        return Received(time.monotonic() - start, "".join(text), "deadline", timed_out=True)
    except Exception as error:  # whatever the SDK raises is what the app gets
        status = getattr(error, "status_code", None)
        message = f"{type(error).__name__}: {error}".replace("\n", " ")
        return Received(time.monotonic() - start, "".join(text), message, status, model=answer_model)
    return Received(time.monotonic() - start, "".join(text), model=answer_model, usage=usage)
