"""The values a handler receives and returns: plain dataclasses, no framework."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from llmroute.http.body import BodyStream


class _Connection(Protocol):
    """What a request needs from its connection: whether the client is still there, and a way out."""

    @property
    def closed(self) -> bool: ...

    def abort(self, reset: bool = False) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(slots=True)
class Request:
    """One parsed HTTP request; `path` is percent-decoded and excludes the raw `query` string, `raw_path` is
    the path as sent (a proxy passes that on, not the decoded one)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; repeated headers joined with ", " (Cookie with "; ")
    body: bytes
    client: tuple[str, int] | None
    _conn: _Connection | None = field(default=None, repr=False, compare=False)
    raw_path: str = ""
    body_stream: BodyStream | None = None
    """Set (and `body` empty) when the server hands the request over before its body arrived: iterate it."""

    def disconnected(self) -> bool:
        """True once the client's connection has closed, so work done only for it can stop."""
        return self._conn is not None and self._conn.closed

    async def wait_disconnected(self) -> None:
        """Return once the client's connection has closed (e.g. to race it against slow work)."""
        if self._conn is not None:
            await self._conn.wait_closed()

    def abort(self, reset: bool = False) -> None:
        """Drop the connection without (finishing) the answer: what a crashing server looks like.

        With `reset`, the client gets a TCP reset instead of an orderly close (simulators use both).
        """
        if self._conn is not None:
            self._conn.abort(reset)


@dataclass(slots=True)
class Response:
    """A complete response sent with Content-Length."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"


@dataclass(slots=True)
class StreamingResponse:
    """A response whose body chunks are sent (chunked) as soon as the iterator yields them."""

    status: int
    chunks: AsyncIterator[bytes]
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/event-stream"


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
