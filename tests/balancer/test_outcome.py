"""FailureKind: one classification of upstream answers for retries, estimates and ejection."""

import pytest

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


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, FailureKind.SERVER_ERROR),
        (503, FailureKind.SERVER_ERROR),
        (429, FailureKind.RATE_LIMITED),
        (401, FailureKind.AUTH),
        (403, FailureKind.AUTH),
        (408, FailureKind.TIMEOUT),
        (400, FailureKind.CLIENT_ERROR),
        (404, FailureKind.CLIENT_ERROR),
        (302, FailureKind.CLIENT_ERROR),
    ],
)
def test_http_statuses_map_to_kinds(status: int, kind: FailureKind) -> None:
    assert FailureKind.for_status(status) is kind
