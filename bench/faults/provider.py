"""A fault-injecting OpenAI chat provider on a real socket: healthy until armed, then it misbehaves as its
script says (status errors, resets, silence, broken or garbled streams), and records every request it saw.

HTTP/1.1 is written by hand so that each fault is exactly what a real provider's network does: a stream
cut is a chunked body that ends without its last chunk, a reset is a TCP RST, silence is a held socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ANSWER = (
    "The lighthouse keeper counted forty ships that night, wrote each name in the log, trimmed the wick "
    "twice, and at dawn walked down to the harbour to tell the harbour master that every one had come home."
)
"""The one answer every healthy backend gives (word by word when streaming): what a whole answer is."""
CHUNK_DELAY_S = 0.05
HOLD_S = 60.0
"""How long a silent or stalled provider holds its socket (longer than any deadline in the bench)."""

Kind = Literal["ok", "status", "reset", "silence", "slow_first", "cut", "stall", "malformed", "no_done"]


@dataclass(frozen=True)
class Action:
    """What the provider does with one request: answer (`ok`), or a fault (`after` = chunks sent first)."""

    kind: Kind = "ok"
    status: int = 0
    error: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    after: int = 10

    @property
    def faulty(self) -> bool:
        return self.kind != "ok"


Script = Callable[[int, float], Action]
"""The armed primary's behaviour for its n-th request (from 0) arriving t seconds after it was armed."""
Prefill = Literal["continue", "reject"]


@dataclass(frozen=True)
class Seen:
    """One chat request as the provider saw it: when (monotonic), what it did, whether it was a prefill."""

    at: float
    kind: Kind
    status: int
    retry_after: float | None
    prefill: bool
    probe: bool = False
    """The request set `max_tokens` (the app never does): a router's own probe, such as llmroute's shadow request."""


def healthy(_n: int, _t: float) -> Action:
    return Action()


class FaultProvider:
    """One provider on 127.0.0.1:port: `arm()` switches it from healthy to its script and clears its log."""

    def __init__(self, model: str, script: Script = healthy, prefill: Prefill = "continue") -> None:
        self.model = model
        self.script = script
        self.prefill = prefill
        self.armed_at: float | None = None
        self.seen: list[Seen] = []
        self.requests: list[dict[str, Any]] = []
        """Every chat request body it received, armed or not (what a router sent, in its exact shape)."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()
        self._ids = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1"

    def arm(self, at: float) -> None:
        self.armed_at = at
        self.seen.clear()

    async def stop(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _hold(self, seconds: float = HOLD_S) -> None:
        """Keep the socket open and say nothing, until `seconds` pass or the provider stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.transport.abort() if self._closing.is_set() else writer.close()

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to be closed."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await _read_body(reader, headers)
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return await _json(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if method != "POST" or not path.endswith("/chat/completions"):
            return await _json(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
        request = json.loads(body)
        return await self._chat(request, writer)

    async def _chat(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        now = time.monotonic()
        self.requests.append(request)
        messages = request.get("messages") or []
        prefix = messages[-1].get("content") if messages and messages[-1].get("role") == "assistant" else None
        if self.armed_at is None:
            action = Action()
        else:
            action = self.script(sum(1 for s in self.seen if not s.prefill), now - self.armed_at)
        if prefix is not None and self.prefill == "reject":
            reject = {"message": "assistant prefill is not supported by this model", "type": "invalid_request_error"}
            action = Action("status", 400, {**reject, "code": "unsupported_prefill"})
        if self.armed_at is not None:
            probe = request.get("max_tokens") is not None
            self.seen.append(Seen(now, action.kind, action.status, action.retry_after, prefix is not None, probe))
        text = ANSWER
        if isinstance(prefix, str) and ANSWER.startswith(prefix):
            text = ANSWER[len(prefix) :]  # continue the prefill (DeepSeek's `prefix: true`)
        if action.kind == "status":
            extra = [("retry-after", f"{action.retry_after:g}")] if action.retry_after is not None else []
            return await _json(writer, action.status, {"error": action.error}, extra)
        if action.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if action.kind == "silence":
            await self._hold()
            return False
        self._ids += 1
        answer_id = f"chatcmpl-{self.model}-{self._ids}"
        usage = usage_of(messages, text)
        if not request.get("stream"):
            message = {"role": "assistant", "content": text}
            doc = {
                "id": answer_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": usage,
            }
            return await _json(writer, 200, doc)
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        return await self._stream(writer, action, answer_id, text, usage if include_usage else None)

    async def _stream(
        self, writer: asyncio.StreamWriter, action: Action, answer_id: str, text: str, usage: dict[str, int] | None
    ) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        if action.kind == "slow_first":
            await self._hold()
            return False

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                "id": answer_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        await _chunk(writer, event({"role": "assistant", "content": ""}))
        words = [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]] if text else []
        for i, word in enumerate(words):
            if i == action.after:
                if action.kind == "cut":
                    writer.close()  # the body ends without its last chunk: the stream broke off
                    return False
                if action.kind == "stall":
                    await self._hold()
                    return False
                if action.kind == "malformed":
                    await _chunk(
                        writer, b'data: {"id": "' + answer_id.encode() + b'", "choices": [{"delta": {"cont\n\n'
                    )
            await asyncio.sleep(CHUNK_DELAY_S)
            await _chunk(writer, event({"content": word}))
        await _chunk(writer, event({}, "stop"))
        if usage is not None:
            done = {"id": answer_id, "object": "chat.completion.chunk", "model": self.model, "choices": []}
            await _chunk(writer, b"data: " + json.dumps({**done, "usage": usage}).encode() + b"\n\n")
        if action.kind == "no_done":
            await self._hold()
            return False
        await _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def usage_of(messages: Sequence[Mapping[str, object]], text: str) -> dict[str, int]:
    """Tokens as this provider counts them: a word of output is a token, a prompt is 4 characters a token."""
    prompt = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 3
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                return b"".join(p[:-2] for p in parts)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}


async def _json(
    writer: asyncio.StreamWriter, status: int, doc: dict[str, Any], extra: list[tuple[str, str]] | None = None
) -> bool:
    body = json.dumps(doc).encode()
    reason = _REASONS.get(status, "Service Unavailable" if status == 503 else "Error")
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in extra or []]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    return True
