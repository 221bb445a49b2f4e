"""Errors the sidecar itself returns to the app, in the shape of the app's API: OpenAI's
`{"error": {"message", "type", "code"}}` or Anthropic's `{"type": "error", "error": {"type", "message"}}`."""

from __future__ import annotations

import json

from llmroute.http import Response
from llmroute.sidecar.upstream.errors import Family

_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}
_ANTHROPIC_TYPES = {  # the types the Anthropic SDK maps to its exception classes
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    431: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(status: int, message: str, code: str | None = None, family: Family = "openai") -> bytes:
    """The JSON body for an error; each SDK turns it into its matching exception class."""
    if family == "anthropic":
        error = {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
        return json.dumps({"type": "error", "error": error, "request_id": None}).encode()
    return json.dumps(
        {"error": {"message": message, "type": _TYPES.get(status, "server_error"), "code": code}}
    ).encode()


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

    def response(self, family: Family = "openai") -> Response:
        """The HTTP response for this error."""
        return Response(self.status, error_body(self.status, self.message, self.code, family), list(self.headers))
