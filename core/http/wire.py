"""HTTP/1.1 response framing: precomputed status lines and header bytes, one join per response."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED = b"transfer-encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_CLOSE = b"connection: close\r\n"
_KEEP_ALIVE_10 = b"connection: keep-alive\r\n"  # HTTP/1.0 only keeps the connection when told so

_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CONTENT_TYPES: dict[str, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is not None:
        return line
    if not 100 <= status <= 999:
        raise ValueError(f"invalid HTTP status {status}")
    return f"HTTP/1.1 {status} \r\n".encode()  # the reason phrase is optional


def _content_type_line(content_type: str) -> bytes:
    line = _CONTENT_TYPES.get(content_type)
    if line is None:
        line = _header_line("content-type", content_type) if content_type else b""
        if len(_CONTENT_TYPES) < 64:  # a handful of distinct types in practice; never grow unbounded
            _CONTENT_TYPES[content_type] = line
    return line


def _header_line(name: str, value: str) -> bytes:
    line = f"{name}: {value}\r\n"
    # Exactly one CR and one LF (the terminator): anything else would let a value split the response.
    if line.count("\r") != 1 or line.count("\n") != 1:
        raise ValueError(f"header {name!r} contains a line break")
    return line.encode("latin-1")


class _DateCache:
    """The Date header changes once a second; format it once a second, not once a request."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = f"date: {formatdate(now, usegmt=True)}\r\n".encode()
        return self.line


_date = _DateCache()


def connection_line(keep_alive: bool, http11: bool) -> bytes:
    """The Connection header needed to tell the client whether the connection stays open."""
    if not keep_alive:
        return _CLOSE
    return b"" if http11 else _KEEP_ALIVE_10


def encode(status: int, content_type: str, headers: list[tuple[str, str]], framing: bytes, body: bytes = b"") -> bytes:
    """Status line, headers, blank line and `body` as one bytes object (one write, one syscall)."""
    parts = [_status_line(status), _date.get(), _content_type_line(content_type), framing]
    if headers:
        # All lines at once: each ends in CR LF, so as many CRs and LFs as lines means no value holds one.
        text = "".join([f"{name}: {value}\r\n" for name, value in headers])
        if text.count("\r") != len(headers) or text.count("\n") != len(headers):
            for name, value in headers:
                _header_line(name, value)  # raises, naming the header
        parts.append(text.encode("latin-1"))
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def content_length(length: int, connection: bytes) -> bytes:
    """Framing headers of a response with a known body length."""
    return b"content-length: %d\r\n%b" % (length, connection)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
