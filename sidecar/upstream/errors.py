"""How a backend call failed, in the words the retry policy and the app-facing errors use."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.upstream import neterrors

_MAX_MESSAGE = 300


Family = Literal["openai", "anthropic"]
"""An error body's shape: OpenAI's `{"error": {...}}` or Anthropic's `{"type": "error", "error": {...}}`."""


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """What an upstream error said, independent of its shape: the inbound edge writes it in the app's."""

    message: str
    type: str
    code: Any = None
    param: Any = None


class UpstreamError(Exception):
    """A failed backend call. `message` is short and human and never holds an API key.

    A 4xx for the app keeps what the backend said (`detail`) and its body (`raw`, in `raw_family`'s
    shape, or None); `body_for` writes it in the shape of the app's API, untouched where they match.
    """

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        detail: ErrorDetail | None = None,
        raw: bytes | None = None,
        raw_family: Family | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.detail = detail
        self.raw = raw
        self.raw_family = raw_family
        self.headers: list[tuple[str, str]] = []
        """Upstream response headers for the app when this error is returned to it (request id, rate limits)."""

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"UpstreamError(kind={self.kind!r}, status={self.status!r}, message={self.message!r})"

    def scrubbed(self, secret: str | None) -> UpstreamError:
        """This error with every occurrence of `secret` masked in its message, detail and body (in place), and
        the start of it that a message cut at its length limit may end with."""
        if secret:
            self.message = mask(self.message, secret)
            self.args = (self.message,)
            if self.raw is not None:
                self.raw = self.raw.replace(secret.encode(), b"***")
            if self.detail is not None:
                detail = self.detail
                self.detail = ErrorDetail(mask(detail.message, secret), detail.type, detail.code, detail.param)
        return self

    def body_for(self, family: Family) -> bytes:
        """The error body in `family`'s shape: the backend's own bytes where the shapes match."""
        if self.raw is not None and self.raw_family == family:
            return self.raw
        detail = self.detail or ErrorDetail(self.message, _default_type(self.status or 500))
        if family == "anthropic":
            error = {
                "type": "error",
                "error": {"type": _anthropic_type(detail.type, self.status), "message": detail.message},
                "request_id": None,
            }
            return json.dumps(error).encode()
        shaped: dict[str, Any] = {"message": detail.message, "type": detail.type, "code": detail.code}
        if detail.param is not None:
            shaped["param"] = detail.param
        return json.dumps({"error": shaped}).encode()


MIN_PARTIAL = 4
"""The shortest start of a key that `mask` masks at the end of a text (fewer characters say nothing of it)."""


def mask(text: str, secret: str) -> str:
    """`text` with `secret` replaced by *** wherever it occurs, and at the end, where a message was cut at its
    length limit (_MAX_MESSAGE) inside the key, its first characters too."""
    text = text.replace(secret, "***")
    for size in range(min(len(secret), len(text)) - 1, MIN_PARTIAL - 1, -1):
        if text.endswith(secret[:size]):
            return text[:-size] + "***"
    return text


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as delta-seconds or an HTTP-date; None if absent."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


_DEFAULT_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPES = frozenset(
    {
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "not_found_error",
        "request_too_large",
        "rate_limit_error",
        "api_error",
        "overloaded_error",
        "timeout_error",
        "billing_error",
    }
)


def _default_type(status: int) -> str:
    return _DEFAULT_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _anthropic_type(etype: str, status: int | None) -> str:
    """One of Anthropic's error types, which its SDK maps to exception classes."""
    return etype if etype in _ANTHROPIC_TYPES else _default_type(status or 500)


def read_error_body(status: int, body: bytes) -> tuple[ErrorDetail, Family | None]:
    """What an upstream error body says, and its shape (None for HTML from a proxy, plain text, ...).

    OpenAI, Azure and Anthropic all nest `message` and `type` under `error`, so one reader fits all three.
    """
    message: str | None = None
    etype: Any = None
    code: Any = None
    param: Any = None
    family: Family | None = None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        message = error.get("message") if isinstance(error.get("message"), str) else None
        etype, code, param = error.get("type"), error.get("code"), error.get("param")
        if message is not None:
            family = "anthropic" if doc.get("type") == "error" else "openai"
    elif isinstance(error, str):
        message = error
    elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
        message = doc["message"]
    if message is None:
        message = body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE] or f"HTTP {status}"
    if not isinstance(etype, str):
        etype = _default_type(status)
    return ErrorDetail(message, etype, code, param), family


_TOO_LONG = ("prompt is too long", "maximum context length", "context length", "context window")


def too_long(status: int, detail: ErrorDetail) -> bool:
    """Whether a 400/413 says the prompt exceeds the backend's context window: OpenAI's (and most compatible
    servers') code `context_length_exceeded`, or Anthropic's "prompt is too long: N tokens > M maximum"."""
    if status not in (400, 413):
        return False
    if detail.code == "context_length_exceeded":
        return True
    message = detail.message.lower()
    return any(phrase in message for phrase in _TOO_LONG)


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """The UpstreamError for a non-2xx answer, keeping what it said and its body."""
    detail, family = read_error_body(status, body)
    kind = FailureKind.CONTEXT_LENGTH if too_long(status, detail) else FailureKind.for_status(status)
    retry_after = parse_retry_after(headers) if status in (429, 503) else None
    return UpstreamError(
        kind,
        f"backend answered {status}: {detail.message[:_MAX_MESSAGE]}",
        status=status,
        retry_after=retry_after,
        detail=detail,
        raw=body,
        raw_family=family,
    )


def error_from_event(error: object, where: str) -> UpstreamError:
    """The UpstreamError for an error event inside a 200 stream (OpenAI `{"error":...}`, Anthropic `error`)."""
    etype = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = str(message or etype or "unknown error")[:_MAX_MESSAGE]
    rate_limited = etype in ("rate_limit_error", "rate_limit_exceeded")
    kind = FailureKind.RATE_LIMITED if rate_limited else FailureKind.SERVER_ERROR
    return UpstreamError(kind, f"backend sent an error {where}: {text}")


def error_from_transport(exc: BaseException) -> UpstreamError:
    """Classify a transport failure (neterrors, or our own asyncio timeout) by what it means for a retry."""
    kind: FailureKind
    if isinstance(exc, neterrors.ConnectTimeout | neterrors.ConnectError):
        kind, what = FailureKind.CONNECT_FAILURE, "could not connect"
    elif isinstance(exc, neterrors.TransportTimeout | TimeoutError):
        kind, what = FailureKind.TIMEOUT, "timed out"
    elif isinstance(exc, neterrors.ProxyError):
        kind, what = FailureKind.CONNECT_FAILURE, "could not reach the backend through the proxy"
    elif isinstance(exc, neterrors.UnsupportedProtocol | neterrors.LocalProtocolError):
        kind, what = FailureKind.CONNECT_FAILURE, "could not send the request"
    else:
        kind, what = FailureKind.RESET, "connection lost"
    detail = str(exc).strip()
    return UpstreamError(kind, f"{what}: {detail}"[:_MAX_MESSAGE] if detail else what)


def too_large(limit: int) -> UpstreamError:
    """A whole answer larger than the sidecar's cap: returned to the app as a 502 (another backend would most
    likely answer the same request as largely, so it is not retried), never held in memory."""
    message = f"the backend's answer is larger than this sidecar's limit of {limit} bytes (--max-answer-bytes)"
    detail = ErrorDetail(message, "api_error", "answer_too_large")
    return UpstreamError(FailureKind.CLIENT_ERROR, message, status=502, detail=detail)


def bad_body(status: int, why: str) -> UpstreamError:
    """A 2xx answer we cannot use: counted like a server error so the request fails over."""
    return UpstreamError(
        FailureKind.SERVER_ERROR,
        f"backend answered {status} with an unusable body: {why}"[:_MAX_MESSAGE],
        status=status,
    )


def cut_short(events: int, missing: str = "the end of the answer") -> UpstreamError:
    """A stream whose connection ended before `missing` arrived: never a complete answer. Without any event
    at all it is an unusable body; after some, an interruption (retried like a reset)."""
    if not events:
        return bad_body(200, "the event stream ended without any event")
    return UpstreamError(FailureKind.RESET, f"the event stream ended before {missing}")


def invalid_request(message: str) -> UpstreamError:
    """A request we cannot translate for this provider: the app's fault, returned as a 400, never retried."""
    detail = ErrorDetail(message, "invalid_request_error")
    return UpstreamError(FailureKind.CLIENT_ERROR, message, status=400, detail=detail)
