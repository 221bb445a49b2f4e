"""The app side of the demo: mixed traffic, as a shop's backend would send it: chat completions and
embeddings through the official openai SDK, and Anthropic Messages calls (the wire format the Anthropic
SDK speaks) for the same chat model.

Requests arrive at a steady rate (open loop, like users do, so a slow backend does not slow the arrivals),
with at most `max_in_flight` outstanding. Each is critical, normal or batch, streaming or not; what the
app saw (latency, answering backend, attempts, cost, error) is kept as a `Result`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

PRIORITY_MIX = (("critical", 0.2), ("normal", 0.5), ("batch", 0.3))
API_MIX = (("chat", 0.8), ("embeddings", 0.1), ("messages", 0.1))
"""Share of requests per inbound API: chat completions, embeddings (model `search`, always normal priority),
Anthropic Messages."""
ANTHROPIC_VERSION = "2023-06-01"
STREAM_SHARE = 0.4
"""Share of critical and normal requests that stream (batch jobs never do)."""
_COST_COMMENT = ": x-llmroute-cost-usd="
_PROMPTS = (
    "Where is my order #4411?",
    "Can I return shoes bought on sale?",
    "Summarise this customer's last three tickets.",
    "Which jacket is warmer, the Fjell or the Nord?",
)


@dataclass(frozen=True, slots=True)
class Result:
    """One request as the app saw it. `started` counts from the demo's start."""

    started: float
    priority: str
    stream: bool
    api: str
    ok: bool
    latency: float
    backend: str | None = None
    attempts: int = 0
    cost: float = 0.0
    error: str | None = None
    """Short reason of a failure: the HTTP status, or timeout / connection."""
    detail: str = ""
    """The failure's message (the sidecar names each backend tried and its error)."""


class Traffic:
    """Sends requests to the sidecar at `rate` per second until told to stop, keeping every Result."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        search_model: str,
        rate: float,
        max_in_flight: int,
        origin: float,
        seed: int | None = None,
    ) -> None:
        # max_retries=0: the SDK's own retries would hide what the router did.
        self._client = AsyncOpenAI(base_url=base_url, api_key="unused-by-the-sidecar", max_retries=0, timeout=60.0)
        self._http = httpx.AsyncClient(base_url=base_url, timeout=60.0)
        self._model = model
        self._search_model = search_model
        self._rate = rate
        self._slots = asyncio.Semaphore(max_in_flight)
        self._origin = origin
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: list[Result] = []

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def run(self, until: float) -> None:
        """Send requests until `until` (time.monotonic()), then wait for the last ones to finish."""
        next_at = time.monotonic()
        while True:
            next_at += self._rng.expovariate(self._rate)
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.monotonic() >= until:
                break
            await self._slots.acquire()
            task = asyncio.create_task(self._one())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.gather(*self._tasks)

    async def aclose(self) -> None:
        """Cancel what is still running and close the SDK client."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.close()
        await self._http.aclose()

    async def _one(self) -> None:
        rng = self._rng
        api = rng.choices([a for a, _ in API_MIX], [w for _, w in API_MIX])[0]
        # Search embeddings are interactive but never critical; chat takes every class.
        priority = "normal"
        if api != "embeddings":
            priority = rng.choices([p for p, _ in PRIORITY_MIX], [w for _, w in PRIORITY_MIX])[0]
        stream = api == "chat" and priority != "batch" and rng.random() < STREAM_SHARE
        prompt = rng.choice(_PROMPTS)
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": prompt}]
        started = time.monotonic()
        try:
            if api == "embeddings":
                result = await self._embed(priority, prompt, started)
            elif api == "messages":
                result = await self._message(priority, prompt, started)
            elif stream:
                result = await self._stream(priority, messages, started)
            else:
                result = await self._complete(priority, messages, started)
        except openai.APIStatusError as exc:
            result = self._failed(
                priority, stream, api, started, str(exc.status_code), exc.message, exc.response.headers
            )
        except (openai.APITimeoutError, httpx.TimeoutException):
            result = self._failed(priority, stream, api, started, "timeout", "no answer from the sidecar in time")
        except (openai.APIConnectionError, httpx.TransportError) as exc:
            result = self._failed(priority, stream, api, started, "connection", str(exc))
        finally:
            self._slots.release()
        self.results.append(result)

    def _failed(
        self,
        priority: str,
        stream: bool,
        api: str,
        started: float,
        error: str,
        detail: str,
        headers: Mapping[str, str] | None = None,
    ) -> Result:
        attempts = int(headers.get("x-llmroute-attempts") or 0) if headers is not None else 0
        elapsed = time.monotonic() - started
        kind = "stream" if stream else "request"
        detail = f"{priority} {api} {kind} after {elapsed * 1000:.0f} ms, {attempts} attempts: {detail}"
        return Result(
            started - self._origin, priority, stream, api, False, elapsed, attempts=attempts, error=error, detail=detail
        )

    def _answered(self, priority: str, api: str, started: float, ok: bool, headers: Mapping[str, str]) -> Result:
        """A JSON answer as the app saw it, from the sidecar's response headers."""
        return Result(
            started - self._origin,
            priority,
            False,
            api,
            ok,
            time.monotonic() - started,
            backend=headers.get("x-llmroute-backend"),
            attempts=int(headers.get("x-llmroute-attempts") or 0),
            cost=float(headers.get("x-llmroute-cost-usd") or 0.0),
            error=None if ok else "empty",
        )

    async def _embed(self, priority: str, prompt: str, started: float) -> Result:
        raw = await self._client.embeddings.with_raw_response.create(
            model=self._search_model, input=prompt, extra_headers={"x-llmroute-priority": priority}
        )
        return self._answered(priority, "embeddings", started, bool(raw.parse().data), raw.headers)

    async def _message(self, priority: str, prompt: str, started: float) -> Result:
        """An Anthropic Messages call, as the Anthropic SDK sends it (anthropic-version, x-api-key)."""
        body = {"model": self._model, "max_tokens": 64, "messages": [{"role": "user", "content": prompt}]}
        headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "x-api-key": "unused-by-the-sidecar",
            "x-llmroute-priority": priority,
        }
        response = await self._http.post("messages", json=body, headers=headers)
        if response.status_code != 200:
            try:  # the sidecar answers errors on /v1/messages in Anthropic's shape
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            return self._failed(
                priority, False, "messages", started, str(response.status_code), message, response.headers
            )
        return self._answered(priority, "messages", started, bool(response.json().get("content")), response.headers)

    async def _complete(self, priority: str, messages: list[ChatCompletionMessageParam], started: float) -> Result:
        raw = await self._client.chat.completions.with_raw_response.create(
            model=self._model,
            messages=messages,
            max_tokens=64,
            extra_headers={"x-llmroute-priority": priority},
        )
        return self._answered(priority, "chat", started, bool(raw.parse().choices), raw.headers)

    async def _stream(self, priority: str, messages: list[ChatCompletionMessageParam], started: float) -> Result:
        """A stream read line by line, as an app that wants the cost comment at its end has to."""
        cost, error, detail, chunks = 0.0, None, "", 0
        async with self._client.chat.completions.with_streaming_response.create(
            model=self._model,
            messages=messages,
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-llmroute-priority": priority},
        ) as response:
            headers = response.headers
            async for line in response.iter_lines():
                if line.startswith(_COST_COMMENT):
                    cost = float(line[len(_COST_COMMENT) :])
                elif line.startswith("data:") and line[5:].strip() != "[DONE]":
                    event = json.loads(line[5:])
                    if "error" in event:
                        error, detail = "stream-error", str(event["error"].get("message", ""))
                    else:
                        chunks += 1
        ok = error is None and chunks > 0
        return Result(
            started - self._origin,
            priority,
            True,
            "chat",
            ok,
            time.monotonic() - started,
            backend=headers.get("x-llmroute-backend"),
            attempts=int(headers.get("x-llmroute-attempts") or 0),
            cost=cost,
            error=None if ok else error or "empty-stream",
            detail=detail,
        )
