"""HTTPServer: listen, serve connections, and drain gracefully on shutdown."""

from __future__ import annotations

import asyncio

from llmroute.http.connection import ErrorBody, HTTPConnection, ServerContext, StreamsBody, default_error_body
from llmroute.http.messages import Handler
from llmroute.waits import wait_event


class HTTPServer:
    """A small HTTP/1.1 server for one async handler, built for low per-request overhead."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int = 4 * 1024 * 1024,
        error_body: ErrorBody | None = None,
        keepalive_timeout: float = 75.0,
        read_timeout: float = 60.0,
        streams_body: StreamsBody | None = None,
    ) -> None:
        """`read_timeout`: seconds a client has to send a whole request (head and body) once it has begun
        one; slower ones get 408 and the connection is closed (no slowloris holds a connection for ever).
        `streams_body`: which requests the handler gets before their body, to read it as it arrives
        (no `max_body_bytes` limit; `read_timeout` then bounds each silence within the body)."""
        self._ctx = ServerContext(
            handler, max_body_bytes, error_body or default_error_body, keepalive_timeout, read_timeout, streams_body
        )
        self._server: asyncio.Server | None = None
        self._port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (port 0 picks a free one, see `port`)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self._ctx), host, port, reuse_address=True, backlog=1024
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        """The port actually listened on."""
        if self._server is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def in_flight(self) -> int:
        """Requests being handled or written right now."""
        return len(self._ctx.tasks)

    async def shutdown(self, grace: float) -> None:
        """Stop accepting and close idle connections; let in-flight requests and streams finish
        for up to `grace` seconds, then drop what is left."""
        ctx = self._ctx
        ctx.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(ctx.connections):
            conn.drain()
        ctx.note_change()
        await wait_event(ctx.idle, grace)
        for conn in list(ctx.connections):
            conn.abort(reset=True)
        tasks = list(ctx.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
