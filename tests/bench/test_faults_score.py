"""bench/faults' scoring: what the app received and what the provider saw, turned into pass / partial / safe /
fail exactly as docs/performance.md defines them."""

from __future__ import annotations

from bench.faults.catalogue import CATALOGUE
from bench.faults.provider import ANSWER, FaultProvider, Seen
from bench.faults.run import Cell, attach_attempts, attempts_by_trace
from bench.faults.score import Received, score_row

REASON = "filtered by the content management policy"


def seen(*times: float, kind: str = "status", retry_after: float | None = None) -> list[Seen]:
    return [Seen(t, kind, 503, retry_after, False) for t in times]  # type: ignore[arg-type]


def test_the_whole_answer_from_a_well_treated_provider_passes() -> None:
    assert score_row([Received(0.4, ANSWER)], seen(0.0), budget=1).score == "pass"


def test_a_truncated_stream_that_ends_as_if_complete_fails() -> None:
    verdict = score_row([Received(0.4, ANSWER[:65])], seen(0.0), budget=1)
    assert verdict.score == "fail"
    assert "truncated" in verdict.why


def test_a_repeated_or_different_text_is_a_wrong_answer() -> None:
    assert score_row([Received(0.4, ANSWER[:65] + ANSWER)], [], budget=1).score == "fail"


def test_an_error_is_safe_and_the_whole_text_then_an_error_is_partial() -> None:
    assert score_row([Received(2.0, ANSWER[:65], "APIError: stream_interrupted")], [], budget=1).score == "safe"
    assert score_row([Received(12.0, ANSWER, "APITimeoutError")], [], budget=1).score == "partial"


def test_nothing_by_the_deadline_fails_even_with_text_so_far() -> None:
    assert score_row([Received(15.0, ANSWER[:65], "deadline", timed_out=True)], [], budget=1).score == "fail"


def test_the_worst_request_of_a_row_decides() -> None:
    got = [Received(0.1, ANSWER), Received(0.1, ANSWER, "APIError"), Received(0.1, "")]
    assert score_row(got, [], budget=3).score == "fail"


def test_a_hammered_provider_turns_a_pass_into_partial() -> None:
    assert score_row([Received(0.1, ANSWER)], seen(0.0, 0.5), budget=2).score == "pass"
    verdict = score_row([Received(0.1, ANSWER)], seen(0.0, 0.5, 1.0), budget=2)
    assert (verdict.score, verdict.why) == ("partial", "3 faulty answers from the primary (budget 2)")


def test_a_request_before_retry_after_has_passed_turns_a_pass_into_partial() -> None:
    honoured = [*seen(0.0, retry_after=2.0), *seen(2.01, kind="ok")]
    assert score_row([Received(2.1, ANSWER)], honoured, budget=1).score == "pass"
    early = [*seen(0.0, retry_after=2.0), *seen(0.8, kind="ok")]
    verdict = score_row([Received(0.9, ANSWER)], early, budget=1)
    assert verdict.score == "partial"
    assert "Retry-After 2 s ignored" in verdict.why


def test_a_content_filter_must_come_back_as_the_providers_400_with_its_reason() -> None:
    def one(received: Received) -> str:
        return score_row([received], seen(0.0), budget=1, expect_error=400, reason=REASON).score

    assert one(Received(0.1, "", f"BadRequestError: {REASON}", 400)) == "pass"
    assert one(Received(0.1, "", "InternalServerError: all backends failed", 503)) == "safe"
    assert one(Received(0.1, ANSWER)) == "fail"


def test_accounting_checks_the_model_and_usage_of_the_backend_that_answered() -> None:
    fallback = ("gpt-fallback", (15, 37))
    right = Received(0.1, ANSWER, model="gpt-fallback", usage=(15, 37))
    wrong = Received(0.1, ANSWER, model="gpt-primary", usage=(15, 37))
    assert score_row([right], seen(0.0), budget=1, answered_by=fallback).score == "pass"
    assert score_row([wrong], seen(0.0), budget=1, answered_by=fallback).score == "partial"


def test_attempts_are_read_from_the_access_log_by_trace_id() -> None:
    # The sidecar's stdout mixes its own log lines with the access log's JSON lines; each request is found by
    # the trace id the app sent, and one the log does not name has no count (not a made-up 1).
    log = "\n".join(
        [
            "2026-12-01 19:40:00 INFO llmroute.sidecar: listening",
            '{"trace_id":"aa","attempts":2,"status":200}',
            '{"trace_id":null,"attempts":1}',
            '{"broken',
            '{"trace_id":"bb","attempts":1,"status":200}',
        ]
    )
    attempts = attempts_by_trace(log)
    assert attempts == {"aa": 2, "bb": 1}
    cell = Cell(CATALOGUE[0], "chat", "llmroute", FaultProvider("p"), None)
    cell.received = [Received(0.1, ANSWER, trace_id="aa"), Received(0.1, ANSWER, trace_id="cc")]
    attach_attempts([cell], attempts)
    assert [r.attempts for r in cell.received] == [2, None]
