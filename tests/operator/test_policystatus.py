"""A budget's state in the policy's status: exhausted once spent, or once what is left pays for no request of
the sizes the window has seen, which a sidecar refuses although the limit is not reached to the cent."""

from __future__ import annotations

import pytest

from llmroute.model.policy import Budget
from llmroute.model.policy_parse import parse_policy_spec
from llmroute.operator.policystatus import budget_state
from llmroute.operator.quotas import QuotaFigures

NOW = 1_796_155_300.0


def budget(action: str = "Reject") -> Budget:
    spec = {"budgets": [{"name": "hourly", "window": "1h", "limitUSD": 0.1, "action": action}]}
    if action == "Downgrade":
        spec["budgets"][0]["downgrade"] = {"maxPricePerMTok": 1.0}
    return parse_policy_spec(spec, name="limits", namespace="shop", generation=1).budgets[0]


def figures(
    used: float, smallest_ask: float, *, reserved: float = 0.0, rejected: int = 0, piece: float | None = None
) -> QuotaFigures:
    return QuotaFigures(budget().window.start(NOW), used, reserved, rejected, None, smallest_ask, piece)


@pytest.mark.parametrize(
    ("seen", "state", "spent_out"),
    [
        (None, "Ok", False),  # nothing reported yet
        (figures(0.09, 0.003), "Ok", False),
        (figures(0.098, 0.003), "Exhausted", True),  # 0.002 left: less than any request made in the window
        (figures(0.098, 0.0), "Ok", False),  # no request sizes known (another release's replicas), no refusals
        (figures(0.0995, 0.0, rejected=3), "Exhausted", True),  # refused with 99.5% spent
        (figures(0.1, 0.0), "Exhausted", True),
        (figures(0.09, 0.003, reserved=0.009), "Ok", False),  # in flight: it may settle lower
        # 0.01 left, but in pieces of at most 0.002 (sidecars' rooms, the rest nobody holds) while requests of
        # 0.003 are refused: none of them pays for one now, and the operator gathers them (no Event: not spent).
        (figures(0.09, 0.003, rejected=2, piece=0.002), "Exhausted", False),
        (figures(0.09, 0.003, rejected=2, piece=0.004), "Ok", False),  # one piece pays for a request
        (figures(0.09, 0.003, piece=0.002), "Ok", False),  # nobody refused: nobody asks for more now
    ],
)
def test_a_budget_is_exhausted_once_what_is_left_pays_for_no_request(
    seen: QuotaFigures | None, state: str, spent_out: bool
) -> None:
    assert budget_state(budget(), seen, NOW).state == state
    assert budget_state(budget(), seen, NOW).spent_out == spent_out


def test_a_downgrade_budget_in_that_state_is_downgraded() -> None:
    assert budget_state(budget("Downgrade"), figures(0.098, 0.003), NOW).state == "Downgraded"
