"""Live estimates: what a backend's traffic makes the balancer believe about it."""

import math
import random
from collections.abc import Iterator

import pytest

from llmroute.sidecar.balancer import BackendStats, FailureKind
from llmroute.sidecar.balancer.estimator import FAILURE_PENALTY_S, PeakEWMA, RecentWindow


def served(stats: BackendStats, latency: float, end: float, failure: FailureKind | None = None) -> None:
    stats.finish(stats.start(end - latency), end, failure)


def healthy_streams() -> BackendStats:
    """A backend's stats after 10 healthy streams, one every 0.5 s: first tokens in 0.15 s, answers in 0.3 s."""
    stats = BackendStats()
    for i in range(10):
        token = stats.start(i * 0.5, stream=True)
        stats.first_byte(token, i * 0.5 + 0.15)
        stats.finish(token, i * 0.5 + 0.3)
    return stats


def test_one_slow_answer_is_believed_at_once() -> None:
    ewma = PeakEWMA()
    for i in range(20):
        ewma.observe(0.3, i * 0.1)
    ewma.observe(8.5, 2.1)
    assert ewma.value == 8.5


def test_a_peak_decays_toward_faster_answers_with_a_10s_time_constant() -> None:
    ewma = PeakEWMA()
    ewma.observe(8.5, 0.0)
    ewma.observe(0.3, 10.0)
    assert ewma.value == pytest.approx(0.3 + 8.2 / math.e)


def test_fast_failures_count_as_failures_and_never_make_a_backend_look_fast() -> None:
    flaky, healthy = BackendStats(), BackendStats()
    for i in range(10):
        served(flaky, 1.0, i * 1.0)
        served(healthy, 0.3, i * 1.0)
    for i in range(10):
        served(flaky, 0.02, 10.0 + i * 0.1, FailureKind.SERVER_ERROR)
    assert flaky.latency.value == pytest.approx(1.0)
    assert flaky.failures.value(11.0) > 0.5
    assert flaky.expected_latency(11.0, load_sensitive=False) > 3.0
    assert healthy.expected_latency(11.0, load_sensitive=False) == pytest.approx(0.3)


def test_a_new_backend_that_only_fails_fast_still_looks_worse_than_a_slow_healthy_one() -> None:
    failing, slow = BackendStats(), BackendStats()
    for i in range(3):
        served(failing, 0.01, float(i), FailureKind.RATE_LIMITED)
        served(slow, 2.0, float(i))
    assert failing.expected_latency(3.0, load_sensitive=False) > slow.expected_latency(3.0, load_sensitive=False)


def test_a_timeout_raises_the_estimate_to_at_least_the_time_waited() -> None:
    stats = BackendStats()
    served(stats, 0.3, 1.0)
    served(stats, 2.0, 3.0, FailureKind.TIMEOUT)
    assert stats.latency.value == pytest.approx(2.0)


def test_a_backend_that_stops_answering_looks_slow_before_any_answer_comes_back() -> None:
    stats = BackendStats()
    served(stats, 0.3, 1.0)
    stats.start(2.0)
    assert stats.expected_latency(2.1, load_sensitive=False) == pytest.approx(0.3)
    assert stats.expected_latency(3.5, load_sensitive=False) == pytest.approx(1.5)


def test_a_long_stream_stops_counting_against_the_backend_after_its_first_byte() -> None:
    stats = BackendStats()
    token = stats.start(0.0)
    stats.first_byte(token, 0.2)
    stats.finish(token, 30.0)
    long_stream = stats.start(40.0)
    stats.first_byte(long_stream, 40.2)
    assert stats.expected_latency(60.0, load_sensitive=False, stream=True) == pytest.approx(0.2)
    assert stats.quantile(0.95, stream=True) == pytest.approx(0.2)


def test_streams_rank_by_ttft_and_fall_back_to_latency_before_any_stream() -> None:
    stats = BackendStats()
    served(stats, 1.2, 1.0)
    assert stats.expected_latency(1.0, load_sensitive=False, stream=True) == pytest.approx(1.2)
    token = stats.start(2.0)
    stats.first_byte(token, 2.25)
    stats.finish(token, 3.0)
    assert stats.expected_latency(3.0, load_sensitive=False, stream=True) == pytest.approx(0.25)


def test_in_flight_load_counts_only_where_latency_grows_with_load() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)
    for _ in range(3):
        stats.start(1.0)
    assert stats.in_flight == 3
    assert stats.expected_latency(1.0, load_sensitive=False) == pytest.approx(0.5)
    assert stats.expected_latency(1.0, load_sensitive=True) == pytest.approx(0.5 * 4)


def test_an_unknown_backend_is_tried_by_one_request_not_by_a_burst() -> None:
    stats = BackendStats()
    assert stats.expected_latency(0.0, load_sensitive=False) == 0.0
    token = stats.start(0.0)
    assert stats.expected_latency(0.01, load_sensitive=False) == math.inf
    stats.finish(token, 0.4)
    assert stats.expected_latency(0.4, load_sensitive=False) == pytest.approx(0.4)


def test_failures_are_forgiven_over_time_and_diluted_by_traffic() -> None:
    quiet, busy = BackendStats(), BackendStats()
    for i in range(100):
        served(busy, 0.3, i * 0.01)
    served(quiet, 0.3, 0.9, FailureKind.SERVER_ERROR)
    served(busy, 0.3, 1.0, FailureKind.SERVER_ERROR)
    assert quiet.failures.value(1.0) == pytest.approx(0.5, abs=0.01)
    assert busy.failures.value(1.0) < 0.02
    assert quiet.failures.value(31.0) < 0.05


def test_request_errors_say_nothing_about_the_backend() -> None:
    stats = BackendStats()
    served(stats, 0.3, 1.0)
    served(stats, 0.001, 2.0, FailureKind.CLIENT_ERROR)
    assert stats.failures.value(2.0) == 0.0
    assert stats.last_observed == 1.0
    assert stats.in_flight == 0


def test_finishing_twice_or_cancelling_a_finished_attempt_changes_nothing() -> None:
    stats = BackendStats()
    token = stats.start(0.0)
    stats.finish(token, 0.3)
    stats.finish(token, 5.0, FailureKind.SERVER_ERROR)
    stats.cancel(token, 9.0)
    assert stats.in_flight == 0
    assert stats.latency.value == pytest.approx(0.3)
    assert stats.failures.value(5.0) == 0.0


def test_a_cancelled_hedge_loser_only_ever_raises_the_estimate() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)
    stats.cancel(stats.start(2.0), 2.1)
    assert stats.latency.value == pytest.approx(0.5)
    stats.cancel(stats.start(3.0), 4.5)
    assert stats.latency.value == pytest.approx(1.5)
    assert stats.failures.value(4.5) == 0.0


def test_p95_covers_the_last_128_answers() -> None:
    window = RecentWindow(128)
    assert window.quantile(0.95) is None
    for ms in range(1, 101):
        window.add(ms / 1000)
    assert window.quantile(0.95) == pytest.approx(0.095)
    for _ in range(128):
        window.add(0.2)
    assert window.quantile(0.95) == pytest.approx(0.2)
    assert window.quantile(0.0) == pytest.approx(0.2)


def test_snapshot_reports_live_estimates() -> None:
    stats = BackendStats()
    served(stats, 0.3, 1.0)
    snap = stats.snapshot(3.0)
    assert snap["latency_ewma_s"] == pytest.approx(0.3)
    assert snap["in_flight"] == 0
    assert snap["since_observed_s"] == pytest.approx(2.0)


def test_a_recovery_is_believed_after_a_few_fast_answers_in_a_row() -> None:
    ewma = PeakEWMA()
    ewma.observe(8.5, 0.0)
    ewma.observe(0.3, 1.0)
    ewma.observe(0.35, 2.0)
    assert ewma.value is not None and ewma.value > 5  # two fast answers are not yet proof
    ewma.observe(0.32, 3.0)
    assert ewma.value == 0.35  # the third resets to the slowest of them
    ewma.observe(0.3, 4.0)
    ewma.observe(9.0, 14.0)  # sent at 5.0, after that fast answer: the backend is slow again
    ewma.observe(0.3, 15.0)
    ewma.observe(0.3, 16.0)
    assert ewma.value is not None and ewma.value > 5  # a new peak in between restarts the count


def test_a_failure_after_a_fast_answer_ends_the_recovery_it_seemed_to_begin() -> None:
    stats = BackendStats()
    served(stats, 8.5, 10.0)
    served(stats, 0.3, 11.0)  # under half the estimate: perhaps a recovery, worth confirming at once
    assert stats.recovering
    served(stats, 0.01, 11.5, FailureKind.SERVER_ERROR)  # an immediate 5xx: it has not recovered
    assert not stats.recovering
    assert stats.failed_in_row == 1
    served(stats, 0.01, 12.0, FailureKind.SERVER_ERROR)
    assert stats.failed_in_row == 2
    served(stats, 0.3, 13.0)
    assert stats.failed_in_row == 0
    served(stats, 0.3, 14.0)
    served(stats, 0.3, 15.0)
    assert stats.expected_latency(15.0, load_sensitive=False) < 5  # the run counts from after the failure


def test_a_fast_first_token_after_slow_ones_may_be_a_recovery_until_a_stream_fails_without_one() -> None:
    # Streams rank a backend by its first tokens, so a first token under half their estimate may be a recovery
    # as much as a fast answer is (the prober confirms it for streams). A stream that then fails or is given
    # up before its first token ends that run, as a failure ends a run of fast answers.
    stats = BackendStats()
    for start, first, end in ((0.0, 6.0, 6.5), (1.0, 7.0, 7.5), (10.0, 10.2, 14.0)):
        token = stats.start(start, stream=True)
        stats.first_byte(token, first)
        stats.finish(token, end)
    assert stats.ttft.recovering and not stats.latency.recovering  # its whole answers are no faster
    assert not stats.recovering  # which is what JSON requests go by
    stats.finish(stats.start(14.0, stream=True), 14.01, FailureKind.SERVER_ERROR)
    assert not stats.ttft.recovering
    token = stats.start(15.0, stream=True)
    stats.first_byte(token, 15.2)
    assert stats.ttft.recovering
    stats.cancel(stats.start(15.5, stream=True), 16.5)  # given up without a first token: a hedge answered first
    assert not stats.ttft.recovering


def test_requests_caught_before_a_recovery_and_given_up_after_it_do_not_restart_its_proof() -> None:
    stats = BackendStats()
    served(stats, 8.5, 10.0)  # degraded: the estimate is 8.5 s
    caught = [stats.start(10.2 + 0.1 * i) for i in range(3)]  # app requests sent to it before it recovered
    served(stats, 0.3, 11.4)  # it recovers: a probe answered fast
    stats.cancel(caught[0], 11.5)  # the caught ones are given up one by one, at their deadlines
    served(stats, 0.3, 11.8)
    stats.cancel(caught[1], 11.9)
    stats.finish(caught[2], 12.0, FailureKind.TIMEOUT)
    served(stats, 0.3, 12.2)  # the third fast answer in a row (sent after the first) proves the recovery
    assert stats.latency.value == pytest.approx(0.3)
    # A request sent after the run began and failing does end it (the probe storm's fix).
    stats = BackendStats()
    served(stats, 8.5, 10.0)
    served(stats, 0.3, 11.4)
    served(stats, 0.01, 11.5, FailureKind.SERVER_ERROR)
    assert not stats.recovering


def test_streams_avoid_a_backend_whose_first_tokens_stopped_coming_and_return_with_its_answers() -> None:
    stats = healthy_streams()
    served(stats, 5.1, 12.0)  # it slows down: a (JSON) shadow probe takes 5.1 s
    stream = stats.start(12.0, stream=True)
    stats.cancel(stream, 14.0)  # a stream waited 2 s for its first token; a hedge answered it elsewhere
    # Nothing in flight: streams are ranked by the estimates alone, and the 0.15 s from before the slowdown
    # must not bring the next ones back to it.
    assert stats.in_flight == 0
    assert stats.expected_latency(14.0, load_sensitive=False, stream=True) >= 2.0
    served(stats, 5.1, 19.5)  # a slow answer says nothing against it
    assert stats.expected_latency(19.5, load_sensitive=False, stream=True) >= 2.0
    failed = stats.start(20.0, stream=True)
    stats.finish(failed, 22.5, FailureKind.TIMEOUT)  # no first token before the deadline either
    assert stats.expected_latency(22.5, load_sensitive=False, stream=True) >= 2.5
    # It recovers: a (JSON) probe answered in 0.3 s shows first tokens come sooner than 2.5 s again, and
    # streams are ranked by the first tokens they measured (plus the timed-out stream's failure penalty).
    served(stats, 0.3, 25.3)
    back = stats.expected_latency(25.3, load_sensitive=False, stream=True)
    assert back == pytest.approx(0.15 + stats.failures.value(25.3) * FAILURE_PENALTY_S)


def test_a_slow_answer_to_a_request_sent_before_a_recovery_neither_hides_nor_undoes_it() -> None:
    stats = BackendStats()
    served(stats, 8.5, 10.0)  # degraded: the estimate is 8.5 s
    straggler = stats.start(10.5)  # a probe sent just before the backend recovered: 8.5 s again
    for end in (11.4, 11.8, 12.2):  # then three requests sent after the recovery, each answered in 0.3 s
        served(stats, 0.3, end)
    assert stats.expected_latency(12.2, load_sensitive=False) == pytest.approx(0.3)
    stats.finish(straggler, 19.0)
    assert stats.expected_latency(19.0, load_sensitive=False) == pytest.approx(0.3)
    assert stats.quantile(1.0) == pytest.approx(8.5)  # it still counts in the quantiles (hedging delays)
    # Its slow answer arriving in the middle of the run of fast ones does not restart the count either.
    stats = BackendStats()
    served(stats, 8.5, 10.0)
    straggler = stats.start(10.5)
    served(stats, 0.3, 11.4)
    stats.finish(straggler, 19.0)
    served(stats, 0.3, 19.4)
    served(stats, 0.3, 19.8)
    assert stats.expected_latency(19.8, load_sensitive=False) == pytest.approx(0.3)


def test_a_recovered_quiet_backend_is_cleared_by_a_run_of_probes_improbable_at_its_failure_rate() -> None:
    stats = BackendStats()
    for i in range(20):
        served(stats, 0.3, i * 0.1)
    for i in range(5):
        served(stats, 1.0, 2.0 + i * 0.1, FailureKind.TIMEOUT)
    assert stats.failures.value(2.5) == pytest.approx(0.21, abs=0.01)
    assert stats.recovering is False  # no answer since: nothing to probe for at once
    # Answers to probes (tests/balancer/test_freshness.py): the run is judged at the share of failures among
    # the latest 20 outcomes, 5 (with the prior success, 5 in 21: 24%): 8 in a row are not improbable at
    # that share (0.76^8 = 0.11), the 9th is (0.085 < IMPROBABLE_RUN).
    for i in range(8):
        served(stats, 0.3, 4.0 + 0.3 * i)
        assert stats.recovering
    assert stats.failures.value(6.1) > 0.1
    served(stats, 0.3, 6.7)
    assert stats.failures.value(6.7) == 0.0
    assert not stats.recovering
    assert stats.expected_latency(6.7, load_sensitive=False) == pytest.approx(0.3)


def _outcomes(stats: BackendStats, rate: float, seconds: float, share: float, seed: int) -> Iterator[float]:
    """`rate` answers a second of 0.3 s for `seconds`, each failing (an immediate 5xx) with probability
    `share`; yields when each ended."""
    rng = random.Random(seed)
    for i in range(round(rate * seconds)):
        now = (i + 1) / rate
        failed = rng.random() < share
        served(stats, 0.01 if failed else 0.3, now, FailureKind.SERVER_ERROR if failed else None)
        yield now


@pytest.mark.parametrize("rate", [5, 10, 30])
def test_a_backend_failing_44_percent_reads_that_share_and_ranks_behind_a_healthy_peer_at_any_rate(
    rate: int,
) -> None:
    flaky, healthy = BackendStats(), BackendStats()
    served(healthy, 0.6, 0.0)  # a healthy peer twice as slow
    readings, behind = [], 0
    for now in _outcomes(flaky, rate, 60.0, 0.44, seed=rate):
        if now > 10:
            readings.append(flaky.failures.value(now))
            expected = flaky.expected_latency(now, load_sensitive=False)
            behind += expected > healthy.expected_latency(now, load_sensitive=False)
    # Before: 0.046 at 5/s, 0.025 at 10/s, 0.009 at 30/s (each success forgave 30% of the failures), a
    # penalty under 0.25 s, so the flaky backend stayed primary and every second request failed over.
    assert 0.3 < sum(readings) / len(readings) < 0.5
    assert behind / len(readings) > 0.85


def test_a_lucky_run_of_a_backend_that_keeps_failing_clears_it_only_until_its_next_failure() -> None:
    stats = BackendStats()
    for i in range(20):
        served(stats, 0.01, 0.2 * i + 0.1, FailureKind.SERVER_ERROR)
        served(stats, 0.3, 0.2 * i + 0.2)
    served(stats, 0.01, 4.1, FailureKind.SERVER_ERROR)
    assert stats.failures.value(4.1) > 0.4
    for i in range(4):  # 4 successes in a row: 6% likely at its rate, so taken as a recovery
        served(stats, 0.3, 4.2 + 0.1 * i)
    assert stats.failures.value(4.5) == 0.0
    served(stats, 0.01, 4.6, FailureKind.SERVER_ERROR)  # it had not recovered: its history counts again
    assert stats.failures.value(4.6) > 0.4


@pytest.mark.parametrize("rate", [5, 10, 30])
def test_a_lone_failure_on_a_busy_healthy_backend_never_puts_it_behind_a_peer_half_as_fast_again(rate: int) -> None:
    stats = BackendStats()
    *_, now = _outcomes(stats, rate, 10.0, 0.0, seed=0)
    served(stats, 0.01, now + 1 / rate, FailureKind.SERVER_ERROR)
    # 1 in its (time-decayed) 32-190 answers of the last 10 s: 3.0% at 5/s, 1.5% at 10/s, 0.5% at 30/s
    reading = stats.failures.value(now + 1 / rate)
    assert reading < 0.035
    for i in range(2, 10 * rate + 1):
        served(stats, 0.3, now + i / rate)
        assert stats.expected_latency(now + i / rate, load_sensitive=False) < 0.45
    assert stats.failures.value(now + 10) == 0.0  # 5 s of answers without another failure cleared it


def test_a_busy_backend_kept_away_after_failing_is_cleared_by_its_first_answer() -> None:
    stats = BackendStats()
    *_, now = _outcomes(stats, 30, 10.0, 0.0, seed=0)
    for i in range(20):  # then 7 of 20 fail: 3.4% of its ~200 recent answers, 66 successes in a row prove it
        failed = i % 3 == 0
        served(stats, 0.01 if failed else 0.3, now + (i + 1) / 30, FailureKind.SERVER_ERROR if failed else None)
    now += 20 / 30
    reading = stats.failures.value(now)
    assert 0.02 < reading < 0.05
    assert stats.failures.value(now + 15.0) == pytest.approx(reading, rel=0.05)  # decay alone keeps the share
    served(stats, 0.3, now + 15.0)  # ejected for 15 s; its first answer since has nothing failed before it
    assert stats.failures.value(now + 15.0) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_a_backend_that_stops_failing_44_percent_is_cleared_by_three_to_eight_probes(seed: int) -> None:
    stats = BackendStats()
    *_, now = _outcomes(stats, 10, 8.0, 0.44, seed)
    served(stats, 0.01, now + 0.1, FailureKind.SERVER_ERROR)
    assert stats.expected_latency(now + 0.1, load_sensitive=False) > 1.0
    probes = 0
    while stats.failures.value(now) > 0.0:
        now += 0.3
        served(stats, 0.3, now)  # probes, one after another
        probes += 1
    assert 3 <= probes <= 8  # never one or two lucky answers; at most 8 (seeds 0-19: 3-8)
    assert stats.expected_latency(now, load_sensitive=False) == pytest.approx(0.3)


@pytest.mark.parametrize("seed", range(20))
def test_a_busy_backend_that_then_failed_half_its_few_requests_is_cleared_by_a_few_probes_after_it_recovers(
    seed: int,
) -> None:
    stats = BackendStats()
    *_, now = _outcomes(stats, 30, 10.0, 0.0, seed=0)  # primary for 10 s: 300 answers
    rng = random.Random(seed)
    for i in range(24):  # then it fails 48% of the 3 requests a second it still gets, for 8 s
        failed = rng.random() < 0.48 or i == 23
        end = now + (i + 1) / 3
        served(stats, 0.01 if failed else 0.3, end, FailureKind.SERVER_ERROR if failed else None)
    now = end
    # Its time-decayed rate is diluted by the 300 answers before (it reads 6-12%), but a run of successes is
    # judged at the share of its latest 20 outcomes: after it recovers, the first answer makes it a backend
    # to probe at once, and a few answers clear it, long before 5 s of successes would.
    probes = 0
    while stats.failures.value(now) > 0.0:
        now += 0.3
        served(stats, 0.3, now)
        probes += 1
        assert stats.recovering or stats.failures.value(now) == 0.0
    assert probes <= 6  # at the time-decayed reading, 19-38 in a row (seeds 0-19: 2-6)


def test_a_straggler_from_before_a_recovery_does_not_hide_it() -> None:
    stats = BackendStats()
    served(stats, 0.3, 1.0)
    straggler = stats.start(2.0)  # sent while the backend was slow; still out 8.5 s later
    for i in range(3):
        served(stats, 0.3, 4.0 + i)
    assert stats.expected_latency(6.5, load_sensitive=False) < 0.5
    newer = stats.start(7.0)  # but a request sent after the last answer still counts as it ages
    assert stats.expected_latency(9.0, load_sensitive=False) >= 2.0
    stats.finish(straggler, 10.5)
    stats.finish(newer, 10.5)


def test_a_straggler_stream_still_gives_its_first_token_time_and_its_wait_when_given_up() -> None:
    stats = BackendStats()
    straggler = stats.start(1.0, stream=True)
    served(stats, 0.2, 1.5)  # sent at 1.3 and answered: the stream sent before it is a straggler now
    stats.first_byte(straggler, 3.0)
    assert stats.quantile(0.5, stream=True) == 2.0
    given_up = stats.start(4.0, stream=True)
    served(stats, 0.2, 4.5)
    stats.cancel(given_up, 9.0)  # waited 5 s for a first token: streams rank the backend by that wait
    assert stats.expected_latency(9.0, load_sensitive=False, stream=True) >= 5.0


def test_a_backend_has_stalled_once_two_requests_since_its_last_answer_are_overdue() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)  # answers take 0.5 s: that is the p95 a request is overdue after
    stats.start(2.0)
    assert not stats.stalled(2.6)  # one overdue request is the backend's tail
    stats.start(2.05)
    assert not stats.stalled(2.52)  # the second is not overdue yet
    assert stats.stalled(2.6)


def test_requests_older_than_a_later_answer_do_not_make_a_stall() -> None:
    stats = BackendStats()
    stats.start(1.0)
    stats.start(1.1)
    served(stats, 0.5, 1.7)  # sent at 1.2 and answered: the backend answers, those two are stragglers
    assert not stats.stalled(3.0)
    stats.start(2.0)
    stats.start(2.1)
    assert stats.stalled(3.0)


def test_streams_are_overdue_past_the_first_byte_p95_and_not_once_it_came() -> None:
    stats = BackendStats()
    stream = stats.start(0.0, stream=True)
    stats.first_byte(stream, 0.2)
    stats.finish(stream, 6.0)  # a long answer: 6 s in all, its first byte after 0.2 s
    waiting = [stats.start(10.0, stream=True), stats.start(10.0, stream=True)]
    assert not stats.stalled(10.15)
    assert stats.stalled(10.3)  # long before 6 s: a stream without a first byte is overdue after 0.2 s
    for token in waiting:
        stats.first_byte(token, 10.35)
    assert not stats.stalled(11.0)  # streaming now: nothing overdue


def test_requests_abandoned_for_a_hedge_while_overdue_still_count_toward_a_stall() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)
    stats.cancel(stats.start(2.0), 2.6)  # overdue; its hedge answered elsewhere, the backend has not
    stats.start(2.1)
    assert stats.stalled(2.7)
    served(stats, 0.5, 3.2)  # an answer to a request sent later clears it
    assert not stats.stalled(3.3)


def test_a_hedge_lost_in_good_time_is_no_evidence_of_a_stall() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)
    stats.cancel(stats.start(2.0), 2.6)  # overdue
    stats.cancel(stats.start(2.1), 2.3)  # a quick loser (say its hedge's backend was faster): not overdue
    stats.start(2.2)
    assert stats.stalled(2.8)  # the overdue loser and the request still waiting; the quick one was not kept


def test_quantiles_follow_the_window_as_old_samples_leave() -> None:
    window = RecentWindow(4)
    for sample in (5.0, 1.0, 3.0, 2.0):
        window.add(sample)
    assert (window.quantile(0.0), window.quantile(1.0)) == (1.0, 5.0)
    window.add(4.0)  # 5.0 leaves
    assert (window.quantile(0.5), window.quantile(1.0)) == (2.0, 4.0)
    window.add(0.5)  # 1.0 leaves
    assert [window.quantile(q) for q in (0.25, 0.5, 0.75, 1.0)] == [0.5, 2.0, 3.0, 4.0]


def test_the_moment_a_backend_stalls_is_known_ahead_from_the_requests_it_has_out() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)  # answers take 0.5 s: a request is overdue after that
    stats.start(2.0)
    assert stats.stall_due(2.1) == math.inf  # one request out can only be the backend's tail
    stats.start(2.05)
    stats.start(2.3)  # a third, sent later: the first two make the quorum before it is overdue
    assert stats.stall_due(2.1) == pytest.approx(2.55)  # when the second one will be overdue
    assert not stats.stalled(2.54)
    assert stats.stalled(2.56)
    assert stats.stall_due(2.9) == pytest.approx(2.55)  # a stall that began then, for what was sent after it
    served(stats, 0.4, 2.95)  # a request sent at 2.55 answered: those out before it are stragglers
    assert stats.stall_due(2.95) == math.inf


def test_a_stall_made_of_a_hedge_given_up_is_due_when_the_request_still_out_is_overdue() -> None:
    stats = BackendStats()
    served(stats, 0.5, 1.0)
    stats.cancel(stats.start(2.0), 2.6)  # overdue at 2.5, given up for a hedge at 2.6
    stats.start(2.4)
    assert stats.stall_due(2.7) == pytest.approx(2.9)
    stream = stats.start(2.45, stream=True)  # no stream history: judged by the answer p95 as well
    assert stats.stall_due(2.7) == pytest.approx(2.9)
    stats.first_byte(stream, 2.6)
    assert stats.stall_due(2.7) == pytest.approx(2.9)


def test_streams_stay_off_a_slowed_backend_as_long_as_its_answers_say_so_not_just_as_long_as_one_waited() -> None:
    stats = healthy_streams()
    stats.cancel(stats.start(10.0, stream=True), 10.4)  # it slowed down: a stream hedged after 0.4 s
    assert stats.expected_latency(10.4, load_sensitive=False, stream=True) == pytest.approx(0.4)
    served(stats, 5.1, 15.2)  # a shadow probe (JSON) sent at 10.1 took 5.1 s
    # Nothing in flight: streams rank it by what its answers take now, not by the 0.4 s the stream waited
    # before a peer 0.3 s away answered it.
    assert stats.in_flight == 0
    assert stats.expected_latency(15.2, load_sensitive=False, stream=True) >= 5.1
    served(stats, 4.6, 15.8)  # its slow answers vary: the next one, a little sooner, is how slow it is now
    assert stats.expected_latency(15.8, load_sensitive=False, stream=True) >= 4.6
    served(stats, 0.3, 16.0)  # recovered: an answer sooner than the stream waited clears it
    assert stats.expected_latency(16.0, load_sensitive=False, stream=True) == pytest.approx(0.15)


def test_a_stream_that_fails_at_once_leaves_streams_ranking_the_backend_by_its_first_tokens() -> None:
    stats = healthy_streams()  # first tokens in 0.15 s
    stats.finish(stats.start(10.0, stream=True), 10.01, FailureKind.SERVER_ERROR)  # an immediate 503
    served(stats, 0.6, 11.0)  # then JSON answers of their usual length
    served(stats, 0.6, 11.5)
    penalty = stats.expected_latency(11.5, load_sensitive=False) - (stats.latency.value or 0.0)
    # The failure counts (its penalty), but 10 ms is no wait for a first token: streams still rank the backend
    # by its first tokens, not by the JSON answers slower than those 10 ms.
    assert stats.expected_latency(11.5, load_sensitive=False, stream=True) == pytest.approx(0.15 + penalty)
    # A stream that failed later than its usual first token did wait for one: streams rank it by that wait.
    stats.finish(stats.start(12.0, stream=True), 12.4, FailureKind.SERVER_ERROR)
    assert stats.expected_latency(12.4, load_sensitive=False, stream=True) >= 0.4


def test_a_slow_json_answer_alone_never_holds_streams_off_a_backend() -> None:
    stats = BackendStats()
    token = stats.start(0.0, stream=True)
    stats.first_byte(token, 0.15)
    stats.finish(token, 0.3)
    served(stats, 8.0, 9.0)  # a long answer (JSON), no stream given up: streams still rank it by first tokens
    assert stats.expected_latency(9.0, load_sensitive=False, stream=True) == pytest.approx(0.15)


def test_a_long_stream_after_a_given_up_one_holds_streams_off_by_its_first_token_not_its_length() -> None:
    stats = healthy_streams()
    stats.cancel(stats.start(10.0, stream=True), 10.4)  # a stream given up there after 0.4 s (a hedge won)
    # The next stream's first token takes 0.5 s (it is slower now), and its whole answer 15 s: streams rank
    # the backend by that first token, not by how long the answer ran.
    stream = stats.start(11.0, stream=True)
    stats.first_byte(stream, 11.5)
    assert stats.expected_latency(11.5, load_sensitive=False, stream=True) == pytest.approx(0.5)
    stats.finish(stream, 26.0)
    assert stats.expected_latency(26.0, load_sensitive=False, stream=True) == pytest.approx(0.5)
