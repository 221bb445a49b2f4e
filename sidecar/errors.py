"""Errors the sidecar itself returns to the app, in OpenAI's `{"error": {"message", "type", "code"}}` shape."""

from __future__ import annotations

import json

from llmroute.http import Response

_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


def error_body(status: int, message: str, code: str | None = None) -> bytes:
    """The JSON body for an error; the OpenAI SDK turns it into the matching exception class."""
    error = {"message": message, "type": _TYPES.get(status, "server_error"), "code": code}
    return json.dumps({"error": error}).encode()


class ProxyError(Exception):
    """A request the sidecar answers with an error of its own (not one passed through from a backend)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or []

    def response(self) -> Response:
        """The HTTP response for this error."""
        return Response(self.status, error_body(self.status, self.message, self.code), list(self.headers))

    def sse_event(self) -> bytes:
        """The error as the last SSE event of a stream that had already begun."""
        return b"data: " + error_body(self.status, self.message, self.code) + b"\n\n"
