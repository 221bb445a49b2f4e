"""Retry budget: retries never multiply load during an outage, yet a quiet route can still retry, and hedges
never take what fail-overs need."""

from llmroute.sidecar.balancer import RetryBudget


def test_with_20_percent_and_100_recent_requests_the_21st_retry_beyond_the_reserve_is_refused() -> None:
    budget = RetryBudget(20, min_retries_per_second=0)
    for i in range(100):
        budget.record_request(i * 0.09)  # 100 requests over the last 9 s
    granted = [budget.try_acquire_retry(9.5) for _ in range(21)]
    assert granted == [True] * 20 + [False]


def test_a_quiet_route_may_spend_the_whole_reserve_at_once_and_gets_it_back_as_it_ages_out() -> None:
    # Ten a second over the 10 s window, as Finagle and tower count it: the requests caught on a backend that
    # slows down all hedge within the same second, and the reserve covers them.
    budget = RetryBudget(20)
    budget.record_request(0.0)
    assert [budget.try_acquire_retry(0.1) for _ in range(101)] == [True] * 100 + [False]
    assert not budget.try_acquire_retry(9.9)
    assert budget.try_acquire_retry(10.1)


def test_hedges_leave_half_the_reserve_to_fail_overs() -> None:
    budget = RetryBudget(20)
    for i in range(100):
        budget.record_request(i * 0.09)  # 20 retries from the share of requests, 100 from the reserve
    hedges = [budget.try_acquire_retry(9.5, hedge=True) for _ in range(71)]
    assert hedges == [True] * 70 + [False]
    # Every hedge the budget still allows was sent: fail-overs after a real error still have 50.
    failovers = [budget.try_acquire_retry(9.5) for _ in range(51)]
    assert failovers == [True] * 50 + [False]
    assert not budget.try_acquire_retry(9.5, hedge=True)


def test_fail_overs_can_leave_nothing_for_hedges() -> None:
    budget = RetryBudget(0)
    budget.record_request(0.0)
    assert sum(budget.try_acquire_retry(0.5) for _ in range(60)) == 60
    assert not budget.try_acquire_retry(0.5, hedge=True)  # 40 left, all kept for fail-overs
    assert budget.try_acquire_retry(0.5)


def test_old_requests_age_out_of_the_window() -> None:
    budget = RetryBudget(20, min_retries_per_second=0)
    for i in range(50):
        budget.record_request(i * 0.01)
    assert budget.try_acquire_retry(5.0)
    assert not budget.try_acquire_retry(11.0)


def test_an_outage_adds_at_most_the_budget_plus_the_reserve() -> None:
    budget = RetryBudget(20)
    requests = retries = 0
    for tick in range(3000):  # 100 requests/s for 30 s, every one failing and wanting two retries
        now = tick * 0.01
        budget.record_request(now)
        requests += 1
        retries += sum(budget.try_acquire_retry(now) for _ in range(2))
    # Each 10 s holds at most 20% of its 1,000 requests plus 100; three such windows, and the last one's
    # reserve again as the first one's retries age out.
    assert retries <= requests * 0.20 + 10 * 30 + 100
    assert retries >= requests * 0.20


def test_a_refusal_says_what_the_budget_was_spent_on() -> None:
    budget = RetryBudget(20)
    for i in range(50):
        budget.record_request(i * 0.1)
    while budget.try_acquire_retry(5.0, hedge=True):
        pass
    assert budget.describe(5.0, hedge=True) == (
        "0 fail-overs and 60 hedges in the last 10 s, 60 hedges may use: 20% of 50 requests plus 100,"
        " less 50 kept for fail-overs"
    )
    assert (
        budget.describe(5.0) == "0 fail-overs and 60 hedges in the last 10 s, 110 allowed: 20% of 50 requests plus 100"
    )
