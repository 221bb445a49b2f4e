"""Retry budget: retries never multiply load during an outage, yet a quiet route can still retry."""

from llmroute.sidecar.balancer import RetryBudget


def test_with_20_percent_and_100_recent_requests_the_21st_retry_is_refused() -> None:
    budget = RetryBudget(20)
    for i in range(100):
        budget.record_request(i * 0.09)  # 100 requests over the last 9 s
    granted = [budget.try_acquire_retry(9.5) for _ in range(21)]
    assert granted == [True] * 20 + [False]


def test_a_quiet_route_can_still_retry_a_few_times_a_second() -> None:
    budget = RetryBudget(20)
    budget.record_request(0.0)
    assert [budget.try_acquire_retry(0.1) for _ in range(11)] == [True] * 10 + [False]
    assert budget.try_acquire_retry(1.2)


def test_old_requests_age_out_of_the_window() -> None:
    budget = RetryBudget(20, min_retries_per_second=0)
    for i in range(50):
        budget.record_request(i * 0.01)
    assert budget.try_acquire_retry(5.0)
    assert not budget.try_acquire_retry(11.0)


def test_an_outage_adds_at_most_the_budget_plus_the_floor() -> None:
    budget = RetryBudget(20)
    requests = retries = 0
    for tick in range(3000):  # 100 requests/s for 30 s, every one failing and wanting two retries
        now = tick * 0.01
        budget.record_request(now)
        requests += 1
        retries += sum(budget.try_acquire_retry(now) for _ in range(2))
    assert retries <= requests * 0.20 + 3 * 30 + 30
    assert retries >= requests * 0.18
