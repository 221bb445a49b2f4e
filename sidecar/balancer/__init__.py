"""The balancer's policies, pure and synchronous except the concurrency gate: live estimates, the five
strategies, shadow-probe freshness, retry budget, outlier ejection and concurrency caps. The request path
composes them: eligible -> rank -> with_fallback -> attempts (stats, ejection, budget)."""

from .candidates import Candidate, eligible
from .concurrency import ConcurrencyGate, GateTimeout, has_headroom
from .ejection import HostStatus, OutlierDetector, Reason, State
from .estimator import BackendStats
from .freshness import ShadowProber
from .outcome import FailureKind
from .pickers import PickContext, expected_cost, rank, with_fallback
from .retry_budget import RetryBudget

__all__ = [
    "BackendStats",
    "Candidate",
    "ConcurrencyGate",
    "FailureKind",
    "GateTimeout",
    "HostStatus",
    "OutlierDetector",
    "PickContext",
    "Reason",
    "RetryBudget",
    "ShadowProber",
    "State",
    "eligible",
    "expected_cost",
    "has_headroom",
    "rank",
    "with_fallback",
]
