"""How a backend call failed, in the words the retry policy and the app-facing errors use."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from llmroute.sidecar.balancer.outcome import FailureKind

_MAX_MESSAGE = 300


class UpstreamError(Exception):
    """A failed backend call. `message` is short and human and never holds an API key."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.kind: FailureKind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"UpstreamError(kind={self.kind!r}, status={self.status!r}, message={self.message!r})"

    def scrubbed(self, secret: str | None) -> UpstreamError:
        """This error with every occurrence of `secret` masked in its message and body (in place)."""
        if secret:
            self.message = self.message.replace(secret, "***")
            self.args = (self.message,)
            if self.body is not None:
                self.body = self.body.replace(secret.encode(), b"***")
        return self


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


def openai_error_body(status: int, body: bytes) -> tuple[str, bytes]:
    """The upstream error message and the body in OpenAI's `{"error": {"message","type","code"}}` shape.

    OpenAI, Azure and Anthropic all nest `message` and `type` under `error`, so one reader fits all three;
    anything else (HTML from a proxy, plain text) becomes the message.
    """
    message: str | None = None
    etype: Any = None
    code: Any = None
    param: Any = None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        message = error.get("message") if isinstance(error.get("message"), str) else None
        etype, code, param = error.get("type"), error.get("code"), error.get("param")
    elif isinstance(error, str):
        message = error
    elif isinstance(doc, dict) and isinstance(doc.get("message"), str):
        message = doc["message"]
    if message is None:
        message = body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE] or f"HTTP {status}"
    if etype is None:
        etype = _DEFAULT_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    shaped: dict[str, Any] = {"message": message, "type": etype, "code": code}
    if param is not None:
        shaped["param"] = param
    return message, json.dumps({"error": shaped}).encode()


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """The UpstreamError for a non-2xx answer, its body reshaped to OpenAI's error shape."""
    message, shaped = openai_error_body(status, body)
    kind = FailureKind.for_status(status)
    retry_after = parse_retry_after(headers) if status in (429, 503) else None
    return UpstreamError(
        kind,
        f"backend answered {status}: {message[:_MAX_MESSAGE]}",
        status=status,
        retry_after=retry_after,
        body=shaped,
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
    """Classify an httpx transport failure (or our own asyncio timeout) by what it means for a retry."""
    kind: FailureKind
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError):
        kind, what = FailureKind.CONNECT_FAILURE, "could not connect"
    elif isinstance(exc, httpx.TimeoutException | TimeoutError):
        kind, what = FailureKind.TIMEOUT, "timed out"
    elif isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError | httpx.ProxyError):
        kind, what = FailureKind.CONNECT_FAILURE, "could not send the request"
    else:
        kind, what = FailureKind.RESET, "connection lost"
    detail = str(exc).strip()
    return UpstreamError(kind, f"{what}: {detail}"[:_MAX_MESSAGE] if detail else what)


def bad_body(status: int, why: str) -> UpstreamError:
    """A 2xx answer we cannot use: counted like a server error so the request fails over."""
    return UpstreamError(
        FailureKind.SERVER_ERROR,
        f"backend answered {status} with an unusable body: {why}"[:_MAX_MESSAGE],
        status=status,
    )


def invalid_request(message: str) -> UpstreamError:
    """A request we cannot translate for this provider: the app's fault, returned as a 400, never retried."""
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return UpstreamError(FailureKind.CLIENT_ERROR, message, status=400, body=json.dumps(body).encode())
