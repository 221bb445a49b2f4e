"""A scriptable HTTP/1.1 server on a real socket (stdlib asyncio) standing in for LLM providers.

Each test gives a `reply(received, responder)` coroutine; the responder writes JSON, SSE (chunked),
resets the connection or hangs, so every failure the upstream layer classifies happens on the wire.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from llmroute.model import Backend, SecretValue
from llmroute.sidecar.upstream import CompletionStream
from tests.egress import PrivateCA, private_ca

KEY = "sk-test-SECRET-0123456789abcdef"


@dataclass
class Received:
    """One request as the server saw it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    connection: int

    def json(self) -> Any:
        return json.loads(self.body)


class Responder:
    """Writes one response on the connection."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.closed = False

    async def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        head = {"content-type": "application/json", "content-length": str(len(body)), **(headers or {})}
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in head.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        await self.writer.drain()

    async def json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        await self.send(status, json.dumps(doc).encode(), headers)

    async def sse(self, pieces: list[bytes], *, complete: bool = True, pause: float = 0.0) -> None:
        """Each piece goes out as its own chunk (and network write); `complete=False` resets afterwards."""
        self.writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in pieces:
            self.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await self.writer.drain()
            await asyncio.sleep(pause)
        if complete:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        else:
            await self.reset()

    async def reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashing server or a dropping load balancer does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.closed = True

    async def hang(self) -> None:
        await asyncio.sleep(3600)


Reply = Callable[[Received, Responder], Awaitable[None]]


Handler = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A TCP (or TLS) server handing each connection to `handler(number, reader, writer)`."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection, request head and body)
        self.closed: list[int] = []  # connections whose client side went away
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/v1/chat/completions", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        number = self.connections
        try:
            await self.handler(number, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def request(self, number: int, reader: asyncio.StreamReader) -> bool:
        """Read one request; False when the client closed the connection instead."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            self.closed.append(number)
            return False
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        self.requests.append((number, head + await reader.readexactly(length)))
        return True


class RawServer(Server):
    """A Server that parses each request and answers it with `reply(received, responder)`."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(self._requests)
        self.reply = reply
        self.received: list[Received] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _requests(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            received = Received(method, target, headers, body, number)
            self.received.append(received)
            responder = Responder(writer)
            await self.reply(received, responder)
            if responder.closed:
                return


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Reply], Awaitable[RawServer]]]:
    """Start a RawServer answering with `reply`; stopped after the test."""
    servers: list[RawServer] = []

    async def start(reply: Reply) -> RawServer:
        server = await RawServer(reply).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
def backend() -> Callable[..., Backend]:
    """A Backend for a server URL, with the test key unless `key=None`."""

    def make(url: str, provider: str = "openai", model: str = "up-model", key: str | None = KEY) -> Backend:
        return Backend(
            name="b1",
            provider=provider,  # type: ignore[arg-type]
            url=url,
            model=model,
            api_key=None if key is None else SecretValue(key),
        )

    return make


def sse_events(*docs: Any) -> list[bytes]:
    """`data:` events (dicts as JSON, strings as they are)."""
    return [b"data: " + (d if isinstance(d, str) else json.dumps(d)).encode() + b"\n\n" for d in docs]


@pytest.fixture
def events() -> Callable[..., list[bytes]]:
    return sse_events


async def drain_stream(stream: CompletionStream) -> list[bytes]:
    """Read a stream to its end and split what it gave into SSE events (an item may hold several);
    checks that it ended complete, leaving `data: [DONE]` to the caller."""
    data = b"".join([item async for item in stream])
    assert stream.complete and b"[DONE]" not in data and data.endswith(b"\n\n")
    return [event + b"\n\n" for event in data.split(b"\n\n") if event]


@pytest.fixture
def drain() -> Callable[[CompletionStream], Awaitable[list[bytes]]]:
    return drain_stream


@pytest.fixture
def key() -> str:
    """The API key every test backend uses: it must reach the wire and nothing else."""
    return KEY


# The egress tests' parts (test_egress.py, test_egress_proxies.py).
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from afar"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
}
PROXY_VARIABLES = (
    *("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy"),
    *("SSL_CERT_FILE", "SSL_CERT_DIR"),
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return private_ca(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it means; none leak in from the machine."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def answer_chat(received: Received, responder: Responder) -> None:
    await responder.json(200, ANSWER)


@pytest.fixture
async def https_backend(pki: PrivateCA) -> AsyncIterator[RawServer]:
    """An OpenAI-style backend on https://localhost whose certificate the private CA signed."""
    server = RawServer(answer_chat)
    server.tls = pki.server_context()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def http_backend() -> AsyncIterator[RawServer]:
    server = await RawServer(answer_chat).start()
    yield server
    await server.stop()
