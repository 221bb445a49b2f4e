"""A request body the handler reads while it arrives: flow-controlled, so a proxy can relay an upload
of any size without holding it in memory."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

HIGH_WATER = 256 * 1024
"""Bytes buffered and not yet read by the handler at which the server stops reading the socket."""


class BodyError(Exception):
    """The body could not be read to its end: the client left, or sent nothing for the read timeout."""


class BodyStream:
    """The chunks of one request body in arrival order; iterate it once.

    `length` is the request's Content-Length (None for a chunked body). The server stops reading the
    client's socket while `HIGH_WATER` bytes wait here, and calls `on_drain` once they no longer do.
    """

    __slots__ = ("_buffered", "_chunks", "_error", "_on_drain", "_waiter", "length", "received_all")

    def __init__(self, length: int | None, on_drain: Callable[[], None]) -> None:
        self.length = length
        self.received_all = False
        self._on_drain = on_drain
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._error: BodyError | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def full(self) -> bool:
        """Enough is buffered that the server should stop reading until the handler catches up."""
        return self._buffered >= HIGH_WATER

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._wake()

    def finish(self) -> None:
        """The last byte of the body has arrived."""
        self.received_all = True
        self._wake()

    def fail(self, error: BodyError) -> None:
        """The body will not arrive in full: the reader gets `error` after the chunks already here."""
        if not self.received_all and self._error is None:
            self._error = error
            self._wake()

    def __aiter__(self) -> BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.received_all:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        chunk = self._chunks.popleft()
        was_full = self.full
        self._buffered -= len(chunk)
        if was_full and not self.full:
            self._on_drain()
        return chunk

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
