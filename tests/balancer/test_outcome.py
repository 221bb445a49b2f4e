"""FailureKind: one classification of upstream answers for retries, estimates and ejection."""

from llmroute.sidecar.balancer import FailureKind


def test_retry_on_spellings_parse_as_kinds() -> None:
    for value in ("connect-failure", "reset", "5xx", "429", "timeout"):
        assert FailureKind(value).value == value


def test_request_errors_blame_nobody_and_429_ejects_only_through_retry_after() -> None:
    assert not FailureKind.CLIENT_ERROR.blames_backend
    assert not FailureKind.CLIENT_ERROR.ejects
    assert FailureKind.RATE_LIMITED.blames_backend
    assert not FailureKind.RATE_LIMITED.ejects
    for kind in (FailureKind.SERVER_ERROR, FailureKind.CONNECT_FAILURE, FailureKind.RESET, FailureKind.TIMEOUT):
        assert kind.ejects and kind.blames_backend
