"""The app's side: one chat request over httpx, JSON or SSE, and what came of it."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx

BACKEND_HEADERS = ("x-llmroute-backend", "x-sim-backend", "x-litellm-model-id")
"""Who answered: the sidecar says so, the sims say so, LiteLLM names the deployment (its id is the backend)."""


@dataclass(frozen=True)
class Attempt:
    """One HTTP exchange. `error` is None on success, else the status code, `timeout`, `connection` or
    `stream-error`; `detail` is the error message the server gave."""

    error: str | None
    seconds: float
    ttft: float | None = None
    backend: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    detail: str = ""


def body(model: str, prompt: str, stream: bool) -> bytes:
    doc: dict[str, object] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    if stream:
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
    return json.dumps(doc).encode()


def _message(raw: bytes) -> str:
    try:
        doc = json.loads(raw)
        return str(doc["error"]["message"]) if isinstance(doc.get("error"), dict) else str(doc)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw[:300].decode(errors="replace")


def _backend(headers: httpx.Headers) -> str | None:
    return next((headers[h] for h in BACKEND_HEADERS if h in headers), None)


async def call(
    client: httpx.AsyncClient,
    url: str,
    payload: bytes,
    stream: bool,
    headers: dict[str, str],
    first_byte_timeout: float | None = None,
) -> Attempt:
    """POST `payload`; give up with `timeout` if the response head has not arrived within `first_byte_timeout`
    (the head comes with the answer or, for streams, with the first token)."""
    started = time.monotonic()
    request = client.build_request(
        "POST", url, content=payload, headers={"content-type": "application/json", **headers}
    )
    try:
        async with asyncio.timeout(first_byte_timeout):
            response = await client.send(request, stream=True)
    except TimeoutError:
        return Attempt("timeout", time.monotonic() - started, detail=f"no answer within {first_byte_timeout:g} s")
    except httpx.TransportError as exc:
        return Attempt("connection", time.monotonic() - started, detail=f"{type(exc).__name__}: {exc}")
    try:
        backend = _backend(response.headers)
        if response.status_code != 200:
            return Attempt(
                str(response.status_code),
                time.monotonic() - started,
                backend=backend,
                detail=_message(await response.aread()),
            )
        if not stream:
            doc = json.loads(await response.aread())
            usage = doc.get("usage") or {}
            ok = bool(doc.get("choices"))
            return Attempt(
                None if ok else "empty",
                time.monotonic() - started,
                backend=backend,
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            )
        return await _read_stream(response, started, backend)
    except httpx.TransportError as exc:
        return Attempt("connection", time.monotonic() - started, detail=f"{type(exc).__name__}: {exc}")
    finally:
        await response.aclose()


async def _read_stream(response: httpx.Response, started: float, backend: str | None) -> Attempt:
    ttft: float | None = None
    usage: dict[str, int] = {}
    chunks, done = 0, False
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            break
        event = json.loads(data)
        if "error" in event:
            message = str(event["error"].get("message", event["error"]))
            return Attempt("stream-error", time.monotonic() - started, ttft, backend, detail=message)
        if event.get("usage"):
            usage = event["usage"]
        if any((c.get("delta") or {}).get("content") for c in event.get("choices") or ()):
            chunks += 1
            if ttft is None:
                ttft = time.monotonic() - started
    error = None if chunks and done else "stream-error"
    return Attempt(
        error,
        time.monotonic() - started,
        ttft,
        backend,
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        "" if error is None else f"stream ended after {chunks} content chunks, [DONE]={done}",
    )
