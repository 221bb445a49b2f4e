"""Incremental server-sent-events parser: events split across reads, multi-line data, comments, CR/LF/CRLF."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PENDING = 8 * 1024 * 1024  # an event larger than this is a broken upstream, not a slow one


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event; `event` is "message" when the stream gave no `event:` field."""

    event: str
    data: bytes


class SSEParser:
    """Feed it raw bytes as they arrive; it returns the events completed so far."""

    __slots__ = ("_data", "_event", "_pending", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""
        self._skip_lf = False
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse `chunk`; raises ValueError when an unterminated line grows past MAX_PENDING."""
        buf = self._pending + chunk if self._pending else chunk
        if self._skip_lf:  # the previous read ended in CR: a LF now is the rest of that CRLF
            self._skip_lf = False
            if buf[:1] == b"\n":
                buf = buf[1:]
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, rest = buf.split(b"\n")
        self._pending = rest
        if len(self._pending) > MAX_PENDING:
            raise ValueError(f"event stream line longer than {MAX_PENDING} bytes")
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                self._event, self._data = "", []
                continue
            if line[0] == 0x3A:  # ":" comment, e.g. keep-alive pings
                continue
            name, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
        return events
