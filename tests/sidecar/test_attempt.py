"""The attempt handle: every verdict releases all it holds, exactly once, whatever path ends it."""

from __future__ import annotations

import pytest

from llmroute.model import parse_spec
from llmroute.sidecar.attempt import Attempt, AttemptClosed
from llmroute.sidecar.balancer.outcome import FailureKind
from llmroute.sidecar.load import LoadRecorder
from llmroute.sidecar.metrics import SidecarMetrics
from llmroute.sidecar.runtime import RouteRuntime, UpstreamPool
from llmroute.sidecar.upstream.errors import UpstreamError
from llmroute.sidecar.upstream.usage import Usage

SPEC = {
    "models": ["chat"],
    "backends": [
        {
            "name": "gpt",
            "provider": "openai",
            "url": "http://127.0.0.1:9/v1",
            "model": "m",
            "price": {"inputPerMTok": 1.0, "outputPerMTok": 2.0},
        }
    ],
}


@pytest.fixture
async def parts() -> tuple[RouteRuntime, SidecarMetrics, LoadRecorder]:
    runtime = RouteRuntime(parse_spec(SPEC, name="r", namespace="ns"), UpstreamPool())
    return runtime, SidecarMetrics(), LoadRecorder()


def start(parts: tuple[RouteRuntime, SidecarMetrics, LoadRecorder], *, stream: bool = False) -> Attempt:
    runtime, metrics, load = parts
    return Attempt(runtime, runtime.candidates[0], metrics, load, stream=stream)


def in_flight(parts: tuple[RouteRuntime, SidecarMetrics, LoadRecorder]) -> tuple[int, int]:
    """(the estimator's, the load report's) count of attempts in flight on the backend."""
    runtime, _, load = parts
    report = load.snapshot_and_reset()
    reported = sum(b.in_flight for b in report.backends)
    return runtime.candidates[0].stats.in_flight, reported


def attempts_total(parts: tuple[RouteRuntime, SidecarMetrics, LoadRecorder], outcome: str) -> float:
    _, metrics, _ = parts
    value = metrics.registry.get_sample_value(
        "llmroute_upstream_attempts_total", {"route": "r", "backend": "gpt", "outcome": outcome}
    )
    return value or 0.0


async def test_success_releases_everything_and_prices_the_usage(parts) -> None:
    attempt = start(parts)
    assert in_flight(parts) == (1, 1)
    cost = attempt.succeed(Usage(prompt_tokens=1000, completion_tokens=500))
    assert cost == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert attempt.closed and in_flight(parts) == (0, 0)
    assert attempts_total(parts, "success") == 1


async def test_a_second_verdict_is_refused(parts) -> None:
    attempt = start(parts)
    attempt.fail(UpstreamError(FailureKind.SERVER_ERROR, "boom"))
    for verdict in (
        attempt.abandon,
        lambda: attempt.succeed(Usage()),
        lambda: attempt.fail(UpstreamError(FailureKind.RESET, "x")),
    ):
        with pytest.raises(AttemptClosed):
            verdict()
    assert attempts_total(parts, "5xx") == 1 and attempts_total(parts, "success") == 0
    assert in_flight(parts) == (0, 0)


async def test_a_block_that_ends_without_a_verdict_abandons_it(parts) -> None:
    with pytest.raises(RuntimeError, match="not an upstream error"), start(parts) as attempt:
        raise RuntimeError("not an upstream error")
    assert attempt.closed and in_flight(parts) == (0, 0)
    assert attempts_total(parts, "success") == attempts_total(parts, "5xx") == 0


async def test_a_handed_over_stream_stays_open_until_its_reader_closes_it(parts) -> None:
    with start(parts, stream=True) as attempt:
        attempt.first_byte()
        handed = attempt.hand_over()
    assert not handed.closed and in_flight(parts) == (1, 1)
    with handed:  # the reader's block: the app went away before the end
        pass
    assert handed.closed and in_flight(parts) == (0, 0)
    assert handed.ttft is not None and handed.ttft >= 0


async def test_a_shadow_probes_stream_teaches_first_tokens_but_not_the_gaps_that_set_the_idle_limit(parts) -> None:
    # Three short "ping" streams would otherwise set a backend's idle limit (4x their longest gaps, at least
    # 2 s) for the app's long streams, which pause to think or call tools.
    runtime, metrics, load = parts
    stats = runtime.candidates[0].stats
    probe = Attempt(runtime, runtime.candidates[0], metrics, load, stream=True, shadow=True)
    probe.first_byte()
    probe.chunk()
    probe.succeed(Usage(prompt_tokens=5, completion_tokens=16), "shadow")
    assert len(stats.ttfts) == 1 and len(stats.gaps) == 0
    stream = start(parts, stream=True)
    stream.first_byte()
    stream.chunk()
    stream.succeed(Usage(prompt_tokens=5, completion_tokens=16))
    assert len(stats.ttfts) == 2 and len(stats.gaps) == 1
