"""Load accounting in the sidecar and identity checks in the operator, without a network."""

from __future__ import annotations

import pytest

from llmroute.operator.auth import AuthenticationFailed, identity_from_review
from llmroute.sidecar.load import LoadRecorder
from llmroute.v1 import histogram


def test_recorder_reports_an_interval_and_starts_again() -> None:
    now = [100.0]
    recorder = LoadRecorder(clock=lambda: now[0])
    recorder.start("chat", "gpt")
    recorder.start("chat", "gpt")
    recorder.finish("chat", "gpt", failure="429", latency=0.2, ttft=None, tokens_in=0, tokens_out=0, cost_usd=0)
    recorder.start("chat", "claude")
    recorder.finish("chat", "claude", failure=None, latency=1.2, ttft=0.3, tokens_in=12, tokens_out=40, cost_usd=0.5)
    now[0] = 105.0
    report = recorder.snapshot_and_reset()
    assert report.interval_seconds == 5.0
    by_backend = {b.backend: b for b in report.backends}
    gpt, claude = by_backend["gpt"], by_backend["claude"]
    assert (gpt.requests, gpt.successes, gpt.failures.rate_limited, gpt.in_flight) == (1, 0, 1, 1)
    assert (claude.requests, claude.successes, claude.tokens_in, claude.tokens_out, claude.spend_usd) == (
        1,
        1,
        12,
        40,
        0.5,
    )
    assert histogram.quantile(claude.latency.counts, 0.5) == pytest.approx(1250.0)  # the middle of (1000, 1500]
    assert claude.ttft.sum_ms == pytest.approx(300.0)
    # Next interval: counters start from zero; the attempt still in flight is carried over.
    gpt_next = recorder.snapshot_and_reset().backends
    assert [(b.backend, b.requests, b.in_flight) for b in gpt_next] == [("gpt", 0, 1)]


def test_quantiles_of_merged_histograms() -> None:
    a = [0] * histogram.BUCKETS
    b = [0] * histogram.BUCKETS
    a[histogram.bucket(40)] += 50
    b[histogram.bucket(2500)] += 50
    merged = [0] * histogram.BUCKETS
    histogram.merge(merged, a)
    histogram.merge(merged, b)
    assert histogram.quantile(merged, 0.5) == 50.0
    assert 2000 < histogram.quantile(merged, 0.95) <= 3000
    assert histogram.quantile([0] * histogram.BUCKETS, 0.95) == 0.0
    assert histogram.quantile([0] * (histogram.BUCKETS - 1) + [3], 0.5) == histogram.BOUNDS_MS[-1]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ({"authenticated": False, "error": "token expired"}, "token expired"),
        ({"authenticated": True, "user": {"username": "alice"}}, "does not belong to a ServiceAccount"),
        (
            {"authenticated": True, "user": {"username": "system:serviceaccount:shop:web"}, "audiences": ["api"]},
            "audience",
        ),
    ],
)
def test_token_reviews_that_are_refused(status: dict[str, object], error: str) -> None:
    with pytest.raises(AuthenticationFailed, match=error):
        identity_from_review({"status": status})


def test_namespace_comes_from_the_service_account() -> None:
    identity = identity_from_review(
        {
            "status": {
                "authenticated": True,
                "user": {"username": "system:serviceaccount:shop:web"},
                "audiences": ["llmroute"],
            }
        }
    )
    assert (identity.namespace, identity.subject) == ("shop", "system:serviceaccount:shop:web")
