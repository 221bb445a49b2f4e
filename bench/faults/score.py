"""Scoring one fault for one arm from what the app received and what the faulty provider saw.

- **pass**: every request got the right outcome (the whole answer, or for a content filter the provider's 400
  with its reason) within the deadline, and the provider was not hammered and its Retry-After was honoured.
- **partial**: the whole answer arrived, but with a blemish: the call still ended in an error (e.g. a
  timeout after the last word), the provider was hammered or its Retry-After ignored, or (accounting row)
  the answer named another backend's model or usage.
- **safe**: a clean bounded error within the deadline (an HTTP error, or a stream that ends with an error
  rather than as if complete), where the right outcome was an answer; or a different error than the
  provider's 400 for a content filter.
- **fail**: a truncated answer presented as complete, a wrong answer (repeated text, a fallback's answer to
  a filtered prompt), or nothing by the deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.faults.provider import ANSWER, Seen

ORDER = ("fail", "safe", "partial", "pass")
RETRY_AFTER_SLACK_S = 0.05


@dataclass(frozen=True)
class Received:
    """What the app got for one request."""

    seconds: float
    text: str
    error: str = ""
    """The exception the app's call raised ("" when it returned normally)."""
    status: int | None = None
    timed_out: bool = False
    model: str = ""
    usage: tuple[int, int] | None = None
    """(prompt_tokens, completion_tokens) as the answer reported them."""
    trace_id: str = ""
    """The W3C trace id the app sent in its `traceparent`: what the proxy's own log names the request by."""
    attempts: int | None = None
    """Backend attempts the proxy made for it, by its own account (llmroute's access log; None where an arm
    reports none)."""


@dataclass(frozen=True)
class Verdict:
    score: str
    why: str


def grade(received: Received, expect_error: int | None, reason: str = "") -> Verdict:
    """The app's side of one request."""
    if received.timed_out:
        return Verdict("fail", f"nothing by the deadline ({len(received.text)} characters so far)")
    if expect_error is not None:
        if not received.error:
            return Verdict("fail", "an answer to a prompt the provider refused")
        if received.status == expect_error and reason in received.error:
            return Verdict("pass", f"the provider's {expect_error} with its reason")
        return Verdict("safe", f"an error without the provider's reason ({received.status})")
    if received.error:
        if received.text == ANSWER:
            return Verdict("partial", f"the whole text, then an error ({_short(received.error)})")
        return Verdict("safe", f"clean error ({_short(received.error)})")
    if received.text == ANSWER:
        return Verdict("pass", "whole answer")
    if ANSWER.startswith(received.text):
        return Verdict("fail", f"truncated answer presented as complete ({len(received.text)} of {len(ANSWER)})")
    return Verdict("fail", "wrong answer (text differs from the whole answer)")


def hammered(seen: Sequence[Seen], budget: int) -> str:
    """Why the provider was mistreated ("" when it was not): more faulty answers than `budget`, or a request
    sent before a Retry-After it had given had passed."""
    faults = [s for s in seen if s.kind != "ok"]
    if len(faults) > budget:
        return f"{len(faults)} faulty answers from the primary (budget {budget})"
    for i, given in enumerate(seen):
        if given.retry_after is None:
            continue
        early = [s for s in seen[i + 1 :] if s.at < given.at + given.retry_after - RETRY_AFTER_SLACK_S]
        if early:
            waited = early[0].at - given.at
            return f"Retry-After {given.retry_after:g} s ignored (next request {waited:.2f} s later)"
    return ""


def worst(verdicts: Sequence[Verdict]) -> Verdict:
    return min(verdicts, key=lambda v: ORDER.index(v.score))


def score_row(
    received: Sequence[Received],
    seen: Sequence[Seen],
    budget: int,
    expect_error: int | None = None,
    reason: str = "",
    answered_by: tuple[str, tuple[int, int]] | None = None,
) -> Verdict:
    """The row's score for one arm: the worst request, then a pass downgraded to partial for a hammered
    provider or (when `answered_by` gives the answering backend's model and usage) wrong accounting."""
    verdict = worst([grade(r, expect_error, reason) for r in received])
    mistreated = hammered(seen, budget)
    if verdict.score != "pass":
        return Verdict(verdict.score, f"{verdict.why}; {mistreated}" if mistreated else verdict.why)
    if mistreated:
        return Verdict("partial", mistreated)
    if answered_by is not None:
        model, usage = answered_by
        wrong = [r for r in received if r.model != model or r.usage != usage]
        if wrong:
            return Verdict("partial", f"answer reports {wrong[0].model} {wrong[0].usage}, answered by {model} {usage}")
        return Verdict("pass", f"whole answer, model and usage of {model}")
    return verdict


def _short(error: str) -> str:
    return error if len(error) <= 90 else error[:87] + "..."
