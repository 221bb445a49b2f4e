"""How an attempt on a backend failed: the one vocabulary the estimators, ejection and retries share.
The upstream layer classifies HTTP statuses and transport errors into these values."""

from __future__ import annotations

from enum import StrEnum


class FailureKind(StrEnum):
    """Why an attempt failed. Values of the retryable kinds are the spellings of the route's `retry.retryOn`."""

    CONNECT_FAILURE = "connect-failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    SERVER_ERROR = "5xx"
    RATE_LIMITED = "429"
    CLIENT_ERROR = "4xx"
    """A 4xx other than 401/403/429: the request was wrong, the backend is fine."""
    AUTH = "auth"
    """401/403: this backend's key is wrong or lacks access; other backends may still serve."""
    CONTEXT_LENGTH = "context-length"
    """The prompt is longer than this backend's context window: a backend with a larger one may serve it."""

    @classmethod
    def for_status(cls, status: int) -> FailureKind:
        """The kind of a non-2xx HTTP answer."""
        if status >= 500:
            return cls.SERVER_ERROR
        return _BY_STATUS.get(status, cls.CLIENT_ERROR)

    @property
    def blames_backend(self) -> bool:
        """Whether it says something about the backend's health (counts in its failure rate), not about the
        request or a limit the backend declares."""
        return self is not FailureKind.CLIENT_ERROR and self is not FailureKind.CONTEXT_LENGTH

    @property
    def ejects(self) -> bool:
        """Whether it counts toward outlier ejection's consecutive failures.

        429 is excluded (it ejects through Retry-After instead) and so are request errors. A bad key (AUTH)
        counts: the backend cannot serve anyone until fixed, and the authenticated GET /models probe tells
        when it is.
        """
        return self in _EJECTING


_EJECTING = frozenset(
    {
        FailureKind.CONNECT_FAILURE,
        FailureKind.RESET,
        FailureKind.TIMEOUT,
        FailureKind.SERVER_ERROR,
        FailureKind.AUTH,
    }
)

_BY_STATUS = {
    401: FailureKind.AUTH,
    403: FailureKind.AUTH,
    408: FailureKind.TIMEOUT,  # the server gave up waiting: retryable like our own timeout
    429: FailureKind.RATE_LIMITED,
}
