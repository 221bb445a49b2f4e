"""Outlier ejection: failing backends leave rotation, come back only after a cheap probe, and never too
many at once."""

import pytest

from llmroute.sidecar.balancer import FailureKind, OutlierDetector, Reason, State
from llmroute.sidecar.balancer.ejection import PROBE_TIMEOUT_S

FIVE_XX = FailureKind.SERVER_ERROR


def fail(detector: OutlierDetector, name: str, now: float, times: int = 5) -> bool:
    return any([detector.record_failure(name, FIVE_XX, now) for _ in range(times)])


def test_five_consecutive_failures_eject_and_a_success_in_between_resets_the_count() -> None:
    detector = OutlierDetector(["a", "b", "c"])
    assert not fail(detector, "a", 0.0, times=4)
    detector.record_success("a")
    assert not fail(detector, "a", 0.0, times=4)
    assert detector.is_available("a")
    assert detector.record_failure("a", FailureKind.CONNECT_FAILURE, 0.0)
    assert not detector.is_available("a")


def test_request_errors_and_plain_429s_do_not_count_toward_ejection() -> None:
    detector = OutlierDetector(["a", "b"])
    for _ in range(10):
        assert not detector.record_failure("a", FailureKind.CLIENT_ERROR, 0.0)
        assert not detector.record_failure("a", FailureKind.RATE_LIMITED, 0.0)
    assert detector.is_available("a")


def test_an_ejected_backend_needs_a_successful_probe_after_its_ejection_time() -> None:
    detector = OutlierDetector(["a", "b"], base_ejection=30.0)
    fail(detector, "a", 100.0)
    assert detector.due_for_probe(129.9) == []
    assert detector.due_for_probe(130.0) == ["a"]
    assert detector.due_for_probe(130.1) == []  # handed out once
    assert not detector.is_available("a")
    detector.probe_result("a", True, 130.2)
    assert detector.is_available("a")


def remaining(detector: OutlierDetector, name: str, now: float) -> float:
    (status,) = [s for s in detector.snapshot(now) if s.name == name]
    return status.remaining_s


def test_failed_trials_back_off_exponentially_up_to_the_cap() -> None:
    detector = OutlierDetector(["a", "b"], base_ejection=30.0)
    fail(detector, "a", 0.0)
    now, waits = 0.0, []
    for _ in range(6):
        waits.append(remaining(detector, "a", now))
        now += waits[-1]
        assert detector.due_for_probe(now) == ["a"]
        detector.probe_result("a", True, now)  # the model list answers: one trial request
        assert detector.trial_started("a")
        assert detector.record_failure("a", FIVE_XX, now)  # which fails: ejected again, for longer
    assert waits == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]


def test_a_backend_whose_probe_fails_is_probed_again_after_the_base_ejection_time() -> None:
    # The probe is free: a failed one does not lengthen the wait, so a backend down for two minutes is back
    # within one base ejection time of its recovery (doubling per failed probe, it came back 90 s after it).
    detector = OutlierDetector(["a", "b"], base_ejection=30.0)
    fail(detector, "a", 0.0)
    now = 0.0
    while True:
        now += remaining(detector, "a", now)
        assert detector.due_for_probe(now) == ["a"]
        if now > 120.0:  # its outage ended at 120 s
            break
        detector.probe_result("a", False, now)
        (status,) = [s for s in detector.snapshot(now) if s.name == "a"]
        assert status.reason is Reason.PROBE_FAILED and status.remaining_s == 30.0
    detector.probe_result("a", True, now)
    assert now == 150.0 and detector.is_available("a")
    assert detector.trial_started("a")
    assert detector.record_failure("a", FIVE_XX, now)  # its failed probes did not add to the back-off
    assert remaining(detector, "a", now) == 60.0


def test_a_failed_probe_waits_no_longer_than_the_longest_ejection() -> None:
    detector = OutlierDetector(["a", "b"], base_ejection=600.0)
    fail(detector, "a", 0.0)
    assert remaining(detector, "a", 0.0) == 300.0
    assert detector.due_for_probe(300.0) == ["a"]
    detector.probe_result("a", False, 300.0)
    assert remaining(detector, "a", 300.0) == 300.0


def test_the_back_off_multiplier_decays_while_the_backend_stays_healthy() -> None:
    detector = OutlierDetector(["a", "b"], base_ejection=30.0)
    fail(detector, "a", 0.0)
    detector.due_for_probe(30.0)
    detector.probe_result("a", True, 30.0)
    detector.trial_started("a")
    detector.record_failure("a", FIVE_XX, 30.0)  # a failed trial: second ejection, 60 s
    detector.due_for_probe(90.0)
    detector.probe_result("a", True, 90.0)
    detector.record_success("a")  # its trial request: active again
    fail(detector, "a", 100.0)  # soon after: third ejection, 120 s
    assert detector.snapshot(100.0)[0].remaining_s == 120.0
    detector.due_for_probe(220.0)
    detector.probe_result("a", True, 220.0)
    detector.record_success("a")
    fail(detector, "a", 220.0 + 90.0)  # 90 s healthy takes three steps off the multiplier of 3
    assert detector.snapshot(310.0)[0].remaining_s == 30.0


@pytest.mark.parametrize(("backends", "max_out"), [(1, 0), (2, 1), (3, 1), (4, 2), (10, 5)])
def test_never_more_than_max_ejection_percent_are_ejected(backends: int, max_out: int) -> None:
    names = [f"b{i}" for i in range(backends)]
    detector = OutlierDetector(names, max_ejection_percent=50)
    for name in names:
        fail(detector, name, 0.0)
    assert sum(not detector.is_available(n) for n in names) == max_out


def test_a_429_with_retry_after_ejects_for_that_long_then_requires_a_probe() -> None:
    detector = OutlierDetector(["a", "b"])
    assert detector.record_rate_limited("a", 3.0, now=10.0)
    assert not detector.is_available("a")
    assert detector.retry_after(["a"], 11.0) == pytest.approx(2.0)
    assert detector.retry_after(["a", "b"], 11.0) is None  # b can still serve
    assert detector.due_for_probe(12.9) == []
    assert detector.due_for_probe(13.0) == ["a"]
    detector.probe_result("a", True, 13.1)
    assert detector.is_available("a")
    assert detector.snapshot(13.1)[0].ejections == 1


def test_rate_limits_are_honoured_even_beyond_max_ejection_percent() -> None:
    detector = OutlierDetector(["a", "b"])
    detector.record_rate_limited("a", 5.0, now=0.0)
    detector.record_rate_limited("b", 2.0, now=0.0)
    assert not detector.is_available("a") and not detector.is_available("b")
    assert detector.retry_after(["a", "b"], 0.5) == pytest.approx(1.5)


def test_a_rate_limited_backend_does_not_let_failures_eject_the_last_one() -> None:
    detector = OutlierDetector(["a", "b"])
    detector.record_rate_limited("a", 30.0, now=0.0)
    assert not fail(detector, "b", 1.0)
    assert detector.is_available("b")


def test_a_lost_probe_is_handed_out_again() -> None:
    detector = OutlierDetector(["a", "b"], base_ejection=30.0)
    fail(detector, "a", 0.0)
    assert detector.due_for_probe(30.0) == ["a"]
    assert detector.due_for_probe(30.0 + PROBE_TIMEOUT_S - 0.1) == []
    assert detector.due_for_probe(30.0 + PROBE_TIMEOUT_S) == ["a"]


def test_snapshot_and_reload_keep_ejections() -> None:
    detector = OutlierDetector(["a", "b", "c"])
    fail(detector, "a", 0.0)
    status = detector.snapshot(10.0)[0]
    assert (status.state, status.reason, status.ejections, status.remaining_s) == (
        State.EJECTED,
        Reason.FAILURES,
        1,
        20.0,
    )
    detector.set_backends(["c", "a", "new"])
    assert [s.name for s in detector.snapshot(10.0)] == ["c", "a", "new"]
    assert not detector.is_available("a")
    assert detector.is_available("new")


def test_a_probed_backend_is_half_open_until_a_trial_request_succeeds() -> None:
    detector = OutlierDetector(["a", "b"], consecutive_failures=1, base_ejection=1.0)
    assert detector.record_failure("a", FailureKind.SERVER_ERROR, 0.0)
    assert detector.due_for_probe(1.0) == ["a"]
    detector.probe_result("a", True, 1.0)
    assert detector.snapshot(1.0)[0].state == State.HALF_OPEN
    assert detector.is_available("a")
    assert detector.trial_started("a")  # the one trial
    assert not detector.is_available("a") and not detector.trial_started("a")
    detector.trial_abandoned("a")  # it lost a race: another request may try
    assert detector.is_available("a") and detector.trial_started("a")
    detector.record_success("a")
    assert detector.snapshot(1.5)[0].state == State.ACTIVE


def test_a_failed_trial_ejects_again_at_once_with_a_longer_back_off() -> None:
    detector = OutlierDetector(["a", "b"], consecutive_failures=3, base_ejection=1.0)
    for _ in range(3):
        detector.record_failure("a", FailureKind.SERVER_ERROR, 0.0)
    detector.due_for_probe(1.0)
    detector.probe_result("a", True, 1.0)  # the model list answers; completions may still be down
    assert detector.trial_started("a")
    assert detector.record_failure("a", FailureKind.SERVER_ERROR, 1.1)  # one failure, not three
    [a, _] = detector.snapshot(1.1)
    assert (a.state, a.reason) == (State.EJECTED, Reason.TRIAL_FAILED)
    assert a.remaining_s > 1.0  # the back-off grew
    # A request error on a trial says nothing of the backend: the circuit stays half-open.
    detector.due_for_probe(10.0)
    detector.probe_result("a", True, 10.0)
    assert detector.trial_started("a")
    assert not detector.record_failure("a", FailureKind.CLIENT_ERROR, 10.1)
    assert detector.snapshot(10.1)[0].state == State.HALF_OPEN and detector.is_available("a")
