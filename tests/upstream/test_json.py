"""json_loads, the request path's short way to read JSON bodies, against json.loads itself."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from llmroute.sidecar.upstream.base import json_loads

BODIES = [
    b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
    b'{"a" : [1, 2] }',
    b'{"a":"\xc3\xa9","b":"\xed\xa0\x80"}',  # UTF-8, and a lone surrogate json.loads lets through
    b"{}",
    '{"a":"é"}'.encode("utf-16-le"),
    '{"a":"é"}'.encode("utf-8-sig"),
    b' {"a":1}',
    b'{"a":1}\n',
    b"[1]",
    b'"text"',
    b"{",
    b'{"a":1}}',
    b'{"a":1}{}',
    b'{"a":}',
    b'{"a":1,}',
    b'{"a":NaN}',
    b'{"a":"\xff"}',
    b"{x}",
    b"",
]


def outcome(read: Callable[[bytes], object], body: bytes) -> object:
    """The value read, or the kind and message of the error."""
    try:
        return ("value", read(body))
    except (ValueError, UnicodeDecodeError) as error:
        return ("error", type(error), str(error))


@pytest.mark.parametrize("body", BODIES)
def test_json_loads_reads_every_body_as_json_loads_does(body: bytes) -> None:
    assert outcome(json_loads, body) == outcome(json.loads, body)


def test_json_loads_fails_on_deep_nesting_as_json_loads_does() -> None:
    body = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    for read in (json.loads, json_loads):
        with pytest.raises(RecursionError):
            read(body)
