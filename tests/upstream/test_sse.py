"""The incremental SSE parser: events split anywhere across reads must come out the same."""

from __future__ import annotations

import pytest

from llmroute.sidecar.upstream.sse import MAX_PENDING, SSEEvent, SSEParser

STREAM = (
    b": keep-alive comment\n"
    b"event: message_start\n"
    b'data: {"a": 1}\n'
    b"\n"
    b"data: line one\n"
    b"data:line two\n"
    b"id: 7\n"
    b"\n"
    b"event: ping\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("message", b"line one\nline two"),
    SSEEvent("message", b"[DONE]"),
]


def parse(pieces: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    return [event for piece in pieces for event in parser.feed(piece)]


def test_whole_stream() -> None:
    assert parse([STREAM]) == EXPECTED


def test_split_at_every_byte() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_even_split_between_cr_and_lf(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    assert parse([stream]) == EXPECTED
    assert parse([stream[i : i + 1] for i in range(len(stream))]) == EXPECTED


def test_event_without_blank_line_is_not_dispatched_yet() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial") == []
    assert parser.feed(b" rest\n") == []
    assert parser.feed(b"\n") == [SSEEvent("message", b"partial rest")]


def test_unbounded_line_is_refused() -> None:
    parser = SSEParser()
    with pytest.raises(ValueError, match="longer than"):
        parser.feed(b"data: " + b"x" * (MAX_PENDING + 1))
