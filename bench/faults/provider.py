"""A fault-injecting provider on a real socket that serves OpenAI chat, Anthropic Messages and OpenAI Responses
(bench.faults.wire): healthy until armed, then it misbehaves as its script says (status errors, resets,
silence, broken or garbled streams) in whichever API it is called, and records every request it saw.

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
from dataclasses import dataclass
from typing import Any, Literal

from bench.faults.wire import WIRES, ErrorKind, Stream, Wire, chat_usage, count_usage

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
    error: ErrorKind = "server_error"
    """What a `status` answer says, written in the called API's own error shape."""
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
    """One request as the provider saw it: when (monotonic), what it did, whether it was a prefill."""

    at: float
    kind: Kind
    status: int
    retry_after: float | None
    prefill: bool
    probe: bool = False
    """The request limited its output as the app never does: a router's own probe, such as llmroute's shadow
    request."""
    api: str = "chat"
    """The API it was called in (bench.faults.wire)."""


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
        """Every request body it received, armed or not (what a router sent, in its exact shape)."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = asyncio.Event()
        self._ids = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    @property
    def root(self) -> str:
        """Its address without a path: the base URL of the Anthropic API (`/v1/messages`)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    @property
    def url(self) -> str:
        """The base URL of the OpenAI APIs (`/chat/completions`, `/responses`)."""
        return f"{self.root}/v1"

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
        wire = next((w for w in WIRES.values() if method == "POST" and path.endswith(w.path)), None)
        if wire is None:
            return await _json(writer, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})
        request = json.loads(body)
        return await self._answer(wire, request, writer)

    async def _answer(self, wire: Wire, request: dict[str, Any], writer: asyncio.StreamWriter) -> bool:
        now = time.monotonic()
        self.requests.append(request)
        prompt, prefix = wire.prompt(request)
        if self.armed_at is None:
            action = Action()
        else:
            action = self.script(sum(1 for s in self.seen if not s.prefill), now - self.armed_at)
        if prefix is not None and self.prefill == "reject":
            action = Action("status", 400, "prefill_rejected")
        refused = None if prefix is None else wire.bad_prefill(prefix)
        if self.armed_at is not None:
            probe = wire.probe(request)
            self.seen.append(
                Seen(now, action.kind, action.status, action.retry_after, prefix is not None, probe, wire.name)
            )
        text = ANSWER
        if prefix is not None and ANSWER.startswith(prefix):
            text = ANSWER[len(prefix) :]  # continue the prefill (Anthropic's, DeepSeek's `prefix: true`)
        if refused is not None and action.kind == "ok":
            return await _json(writer, 400, refused)
        if action.kind == "status":
            extra = [("retry-after", f"{action.retry_after:g}")] if action.retry_after is not None else []
            return await _json(writer, action.status, wire.error(action.error, action.status), extra)
        if action.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if action.kind == "silence":
            await self._hold()
            return False
        self._ids += 1
        answer_id = f"{wire.name}-{self.model}-{self._ids}"
        usage = count_usage(prompt, text)
        if not request.get("stream"):
            return await _json(writer, 200, wire.answer(answer_id, self.model, text, usage))
        events = wire.stream(answer_id, self.model, text, usage if wire.wants_usage(request) else None)
        return await self._stream(writer, action, events, text)

    async def _stream(self, writer: asyncio.StreamWriter, action: Action, events: Stream, text: str) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        if action.kind == "slow_first":
            await self._hold()
            return False
        await _chunk(writer, events.opening())
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
                    await _chunk(writer, events.garbled())
            await asyncio.sleep(CHUNK_DELAY_S)
            await _chunk(writer, events.delta(word))
        await _chunk(writer, events.finish())
        if action.kind == "no_done":
            await self._hold()
            return False
        if terminator := events.terminator():
            await _chunk(writer, terminator)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def usage_of(messages: Sequence[Mapping[str, object]], text: str) -> dict[str, int]:
    """The chat `usage` the provider reports for answering `messages` with `text` (tests hold a router's
    billing to it)."""
    return chat_usage(count_usage("".join(str(m.get("content") or "") for m in messages), text))


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
