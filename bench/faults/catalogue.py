"""The fault catalogue: for each fault, what the primary does once armed, what the app sends, through which
inbound APIs, and what the right outcome is (the whole answer, or for a content-policy rejection the
provider's own 400)."""

from __future__ import annotations

from dataclasses import dataclass

from bench.faults.provider import Action, Prefill, Script
from bench.faults.wire import WIRES

TIMEOUT_S = 10.0
"""The request timeout every arm is given (sidecar class timeout, LiteLLM `timeout`, the SDK's `timeout`)."""
DEADLINE_S = 15.0
"""The app stops waiting this long after sending: the timeout plus time for a clean error to come back."""
RETRY_AFTER_ONCE_S = 2.0
RETRY_AFTER_PERSISTENT_S = 20.0


def _server_error(status: int) -> Action:
    return Action("status", status, "server_error")


def _rate_limited(retry_after: float | None) -> Action:
    return Action("status", 429, "rate_limit", retry_after)


def once(fault: Action) -> Script:
    """The fault on the first request after arming, healthy afterwards."""
    return lambda n, _t: fault if n == 0 else Action()


def always(fault: Action) -> Script:
    return lambda _n, _t: fault


def flapping(period: float) -> Script:
    """503 for the first half of every `period` seconds, healthy for the second half."""
    return lambda _n, t: _server_error(503) if (t % period) < period / 2 else Action()


@dataclass(frozen=True)
class Fault:
    """One row of the scorecard."""

    key: str
    title: str
    script: Script
    stream: bool = False
    requests: int = 1
    interval: float = 1.0
    """Seconds between the app's requests when it sends several."""
    fault_budget: int = 0
    """Most faulty answers the primary may give before it counts as hammered; 0: one per app request."""
    prefill: Prefill = "continue"
    declares_prefill: bool = True
    expect_error: int | None = None
    """The status the app must get back (with the provider's reason) instead of an answer."""
    apis: tuple[str, ...] = tuple(WIRES)
    """The inbound APIs the fault is run through (each against a provider of that API's wire format)."""
    accounting: bool = False
    """Also check that the answer reports the model and usage of the backend that gave it."""
    warmup: int = 12
    """Healthy requests (sent at once) before the fault, so routers know the primary as in production."""

    def reason(self, api: str) -> str:
        """The provider's reason, in `api`'s wording, that the app must get with `expect_error` ("" if none)."""
        return WIRES[api].reason("content_filter") if self.expect_error else ""

    @property
    def budget(self) -> int:
        return self.fault_budget or self.requests


CATALOGUE: tuple[Fault, ...] = (
    Fault("429-ra-once", "429 with Retry-After (2 s), once", once(_rate_limited(RETRY_AFTER_ONCE_S))),
    Fault("429-once", "429 without Retry-After, once", once(_rate_limited(None))),
    Fault(
        "429-ra-persistent",
        "429 with Retry-After (20 s), persistent, 3 requests",
        always(_rate_limited(RETRY_AFTER_PERSISTENT_S)),
        requests=3,
    ),
    Fault("429-persistent", "429 without Retry-After, persistent, 3 requests", always(_rate_limited(None)), requests=3),
    Fault("500-once", "500 once", once(_server_error(500))),
    Fault("503-persistent", "503 persistent, 3 requests", always(_server_error(503)), requests=3),
    Fault("reset", "connection reset before headers", always(Action("reset"))),
    Fault("silence", "silence (JSON request never answered)", always(Action("silence"))),
    Fault("slow-first-token", "slow first token (headers, then nothing)", always(Action("slow_first")), stream=True),
    Fault("stream-cut", "stream cut mid-answer (after 10 words)", once(Action("cut")), stream=True),
    Fault("stream-stall", "stream stall mid-answer (after 10 words)", once(Action("stall")), stream=True),
    Fault(
        "stream-stall-young",
        "stream stall, primary with only 3 streams of history",
        once(Action("stall")),
        stream=True,
        warmup=3,
    ),
    Fault("malformed", "malformed chunk mid-stream", always(Action("malformed")), stream=True),
    Fault(
        "no-terminator", "stream without its terminator, the connection held", always(Action("no_done")), stream=True
    ),
    Fault("context-length", "context length exceeded (400)", always(Action("status", 400, "context_length"))),
    Fault(
        "content-filter",
        "content filter (a 400 the app must get)",
        always(Action("status", 400, "content_filter")),
        expect_error=400,
    ),
    Fault(
        "prefill-rejected",
        "stream cut, the fallback rejects prefill",
        always(Action("cut")),
        stream=True,
        prefill="reject",
        declares_prefill=False,
    ),
    Fault(
        "flapping",
        "flapping primary (503 1 s / up 1 s), 12 requests",
        flapping(2.0),
        requests=12,
        interval=0.5,
        fault_budget=6,
    ),
    Fault("accounting", "fail-over accounting (500, model and usage)", always(_server_error(500)), accounting=True),
)
BEST_SAFE = frozenset({"prefill-rejected"})
"""Faults where no proxy can deliver the whole answer: a clean error is the best possible."""
