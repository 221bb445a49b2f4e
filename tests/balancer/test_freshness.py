"""Shadow probes keep the estimates of backends not currently chosen fresh, at a bounded rate."""

import itertools
from collections.abc import Callable

import pytest

from llmroute.sidecar.balancer import Candidate, FailureKind, ShadowProber
from llmroute.sidecar.balancer.freshness import REFUSED_S

MakeCandidate = Callable[..., Candidate]
Observe = Callable[..., float]


def names(cands: list[Candidate]) -> list[str]:
    return [c.name for c in cands]


def test_only_stale_non_primary_backends_are_probed(make: MakeCandidate, observe: Observe) -> None:
    primary, fresh, stale, unknown = make("primary"), make("fresh"), make("stale"), make("unknown")
    observe(primary, 0.3, 1.0)
    observe(fresh, 0.5, 9.0)
    observe(stale, 0.5, 5.0)
    assert names(ShadowProber().due([primary, fresh, stale, unknown], 10.0)) == ["stale", "unknown"]


def test_a_backend_busy_with_json_requests_is_stale_for_streams_until_a_first_token_is_news(
    make: MakeCandidate,
) -> None:
    # Streams rank a backend by its first tokens, which JSON answers never measure: the app's JSON requests
    # keep a backend fresh for JSON requests only.
    primary, busy = make("primary"), make("busy")
    stats = busy.stats
    stats.finish(stats.start(9.5), 9.8)  # the app's JSON request, sent half a second ago
    assert ShadowProber().due([primary, busy], 10.0) == []
    assert names(ShadowProber().due([primary, busy], 10.0, stream=True)) == ["busy"]
    token = stats.start(9.6, stream=True)  # and once a stream sent since told of its first token
    stats.first_byte(token, 9.7)
    stats.finish(token, 9.9)
    assert ShadowProber().due([primary, busy], 10.0, stream=True) == []


def first_token_fast_once(candidate: Candidate) -> Candidate:
    """`candidate` after three streams whose first tokens took 6 s, 6 s and then 0.2 s, its whole answers no
    faster: a first-token recovery may have begun."""
    stats = candidate.stats
    for start, first, end in ((0.0, 6.0, 6.5), (1.0, 7.0, 7.5), (10.0, 10.2, 14.0)):
        token = stats.start(start, stream=True)
        stats.first_byte(token, first)
        stats.finish(token, end)
    return candidate


def test_a_fast_first_token_is_confirmed_for_streams_only_and_not_past_a_failed_probe(make: MakeCandidate) -> None:
    primary, other = make("primary"), first_token_fast_once(make("other"))
    stats = other.stats
    stats.start(13.0)  # the app's JSON request, still out: it keeps the backend fresh for JSON requests
    prober = ShadowProber()
    # JSON requests do not rank by first tokens: no probes beyond the usual pace for them.
    assert prober.due([primary, other], 14.5) == []
    # For streams it may be recovering: the rest of the proof goes out side by side.
    assert names(prober.due([primary, other], 14.5, stream=True)) == ["other"]
    assert names(prober.due([primary, other], 14.6, stream=True)) == ["other"]
    assert prober.due([primary, other], 14.7, stream=True) == []  # two in flight
    # A probe fails at once, before its first token: the run is over, and probes go back to the usual pace.
    stats.finish(stats.start(14.5, stream=True, shadow=True), 14.8, FailureKind.SERVER_ERROR)
    prober.done("other", 14.5)
    assert prober.due([primary, other], 14.9, stream=True) == []


def test_json_probes_in_flight_do_not_hold_back_the_proof_of_a_fast_first_token(make: MakeCandidate) -> None:
    primary, other = make("primary"), first_token_fast_once(make("other"))
    prober = ShadowProber()
    assert names(prober.due([primary, other], 14.5)) == ["other"]  # stale for JSON: a JSON probe
    assert names(prober.due([primary, other], 16.6)) == ["other"]  # the first slow: another after PATIENCE_S
    # Neither can show a first token: two streamed probes still go out side by side for streams.
    assert names(prober.due([primary, other], 16.7, stream=True)) == ["other"]
    assert names(prober.due([primary, other], 16.8, stream=True)) == ["other"]
    assert prober.due([primary, other], 16.9, stream=True) == []


def test_a_backend_that_refuses_the_probe_as_a_bad_request_is_left_alone_for_a_while(make: MakeCandidate) -> None:
    # A model that takes no `max_tokens`, say: the probe's fixed body is refused every time, and the refusal
    # says nothing of the backend, so it ends no recovery run. Without a pause it was probed on every request.
    primary, other = make("primary"), first_token_fast_once(make("other"))
    prober = ShadowProber()
    assert names(prober.due([primary, other], 14.5, stream=True)) == ["other"]
    prober.done("other", 14.5, refused=True)
    assert other.stats.ttft.recovering  # still open: nothing the backend said ended it
    assert prober.refused_for("other", 14.6) == pytest.approx(REFUSED_S - 0.1)  # shown in /debug/backends
    assert prober.refused_for("primary", 14.6) is None
    assert prober.due([primary, other], 14.6, stream=True) == []
    assert prober.due([primary, other], 14.5 + REFUSED_S - 0.1, stream=True) == []
    assert names(prober.due([primary, other], 14.5 + REFUSED_S, stream=True)) == ["other"]
    assert prober.refused_for("other", 14.5 + REFUSED_S) is None


def test_one_probe_in_flight_and_at_most_one_per_second_per_backend(make: MakeCandidate) -> None:
    primary, other = make("primary"), make("other")
    prober = ShadowProber()
    ranked = [primary, other]
    assert names(prober.due(ranked, 10.0)) == ["other"]
    assert prober.due(ranked, 10.9) == []  # still in flight
    prober.done("other")
    assert names(prober.due(ranked, 12.0)) == ["other"]
    prober.done("other")
    assert prober.due(ranked, 12.5) == []  # within a second of the last
    assert names(prober.due(ranked, 13.0)) == ["other"]


def test_a_slow_probe_holds_back_the_next_for_a_second_only(make: MakeCandidate) -> None:
    ranked = [make("primary"), make("other")]
    prober = ShadowProber()
    prober.due(ranked, 0.0)
    assert prober.due(ranked, 0.9) == []
    assert names(prober.due(ranked, 1.0)) == ["other"]  # it may have recovered since the first was sent


def test_a_probe_result_refreshes_the_backend(make: MakeCandidate) -> None:
    primary, other = make("primary"), make("other")
    prober = ShadowProber()
    (probe,) = prober.due([primary, other], 10.0)
    token = probe.stats.start(10.0)
    probe.stats.finish(token, 10.4)
    prober.done(probe.name)
    assert prober.due([primary, other], 11.5) == []
    assert names(prober.due([primary, other], 12.5)) == ["other"]


def probe_while_answering_in(ranked: list[Candidate], seconds: float, start: float, end: float) -> list[float]:
    """An app request every 100 ms from `start` to `end`; every shadow probe is answered `seconds` after it is
    sent. Returns the probes' send times."""
    prober = ShadowProber()
    sent: list[float] = []
    out: list[tuple[float, Candidate, int]] = []  # (answer due, backend, token)
    for step in range(round((end - start) * 10)):
        now = start + step / 10
        for due_at, probe, token in [o for o in out if o[0] <= now]:
            probe.stats.finish(token, due_at)
            prober.done(probe.name)
            out.remove((due_at, probe, token))
        for probe in prober.due(ranked, now):
            sent.append(now)
            out.append((now + seconds, probe, probe.stats.start(now, shadow=True)))
    return sent


def test_a_degraded_backend_is_probed_every_second_though_its_slow_answers_keep_coming(
    make: MakeCandidate, observe: Observe
) -> None:
    primary, slow = make("primary"), make("slow")
    observe(slow, 8.5, 10.0)
    sent = probe_while_answering_in([primary, slow], 8.5, 13.0, 43.0)
    # An answer that took 8.5 s is news of 8.5 s ago: however often such answers arrive, the backend is probed
    # once a second, so a probe goes out within a second of its recovery whenever it comes. (Counting from the
    # answers, each one made it look fresh for 2 s: probes came in bursts, 6.5 s apart.)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(sent)]
    assert max(gaps) == 1.0
    assert len(sent) == 30


def test_a_backend_answering_far_faster_than_its_estimate_is_probed_again_at_once(
    make: MakeCandidate, observe: Observe
) -> None:
    primary, other = make("primary"), make("other")
    ranked = [primary, other]
    observe(other, 8.5, 10.0)  # degraded: its estimate is 8.5 s
    prober = ShadowProber()
    assert names(prober.due(ranked, 13.0)) == ["other"]
    observe(other, 0.3, 13.3)  # the probe comes back fast: it may have recovered
    prober.done("other")
    # Not after the usual 2 s without news, nor a second after the last probe: now, both answers that would
    # prove it side by side, and no more until one is back.
    assert names(prober.due(ranked, 13.3)) == ["other"]
    assert names(prober.due(ranked, 13.4)) == ["other"]
    assert prober.due(ranked, 13.5) == []
    observe(other, 0.3, 13.6)
    prober.done("other")
    assert names(prober.due(ranked, 13.6)) == ["other"]  # one back, one more: never more than two out
    assert prober.due(ranked, 13.65) == []
    observe(other, 0.3, 13.7)  # the third fast answer in a row proves it: back to the usual pace
    prober.done("other")
    assert other.stats.expected_latency(13.7, load_sensitive=False) < 0.5
    assert prober.due(ranked, 13.8) == []


def test_a_backend_answering_after_failing_is_probed_again_at_once_until_the_run_proves_it(
    make: MakeCandidate, observe: Observe
) -> None:
    primary, other = make("primary"), make("other")
    ranked = [primary, other]
    for i in range(10):  # failing every second request: it reads 50%, so 4 answers in a row prove it
        other.stats.finish(other.stats.start(i * 0.2), i * 0.2 + 0.01, FailureKind.SERVER_ERROR)
        observe(other, 0.3, i * 0.2 + 0.1)
    other.stats.finish(other.stats.start(2.0), 2.01, FailureKind.SERVER_ERROR)
    prober = ShadowProber()
    assert names(prober.due(ranked, 4.5)) == ["other"]  # stale: the usual probe
    for now in (4.8, 5.1, 5.4):
        observe(other, 0.3, now)
        prober.done("other")
        assert names(prober.due(ranked, now)) == ["other"]  # answered after failing: again, at once
    observe(other, 0.3, 5.7)  # the fourth answer in a row clears it: back to the usual pace
    prober.done("other")
    assert other.stats.failures.value(5.7) == 0.0
    assert prober.due(ranked, 5.8) == []


def test_a_lone_failure_on_a_busy_backend_does_not_bring_probes_at_once(make: MakeCandidate, observe: Observe) -> None:
    primary, other = make("primary"), make("other")
    now = observe(other, 0.3, 0.1, times=100)
    other.stats.finish(other.stats.start(now), now + 0.01, FailureKind.SERVER_ERROR)
    prober = ShadowProber()
    assert names(prober.due([primary, other], now + 3.0)) == ["other"]
    observe(other, 0.3, now + 3.3)
    prober.done("other")
    assert prober.due([primary, other], now + 3.3) == []  # 1% failing: time, not a probe storm, forgives it


def test_a_failed_trial_backs_the_probes_off_instead_of_following_every_request(
    make: MakeCandidate, observe: Observe
) -> None:
    primary, other = make("primary"), make("other")
    ranked = [primary, other]
    observe(other, 8.5, 10.0)
    observe(other, 0.3, 11.0)  # fast after slow: probed again as soon as this probe is back
    prober = ShadowProber()
    sent = []
    now = 11.0
    while now < 41.0:  # an app request every 100 ms for 30 s; every probe fails at once with a 503
        for probe in prober.due(ranked, now):
            sent.append(round(now, 1))
            probe.stats.finish(probe.stats.start(now), now + 0.01, FailureKind.SERVER_ERROR)
            prober.done(probe.name)
        now += 0.1
    # The first at once (the trial), then 2 s after each failure (the usual pace) and, from the fourth
    # failure in a row, twice as long per failure up to 8 s.
    # (The app's requests come every 100 ms: each wait ends at the first request past it.)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert sent[0] == 11.0
    assert gaps[:5] == pytest.approx([2.0, 2.0, 2.0, 4.0, 8.0], abs=0.15)
    assert gaps[5:] == pytest.approx([8.0] * len(gaps[5:]), abs=0.15)
    # A trial that succeeds is confirmed at once, as after any failures (the run that clears them).
    observe(other, 0.3, 42.0)
    assert names(prober.due(ranked, 42.0)) == ["other"]


def test_a_healthy_backend_with_slow_answers_is_measured_by_its_traffic_not_probed(make: MakeCandidate) -> None:
    # Answers take 10 s (long completions): each outcome is news of 10 s ago, but the app sends it a request
    # every half second, and those are what measure it. It is second choice on every request here.
    primary, slow = make("primary"), make("slow")
    prober = ShadowProber()
    probes, out = 0, []
    for step in range(240):  # 120 s
        now = step * 0.5
        for started, token in [o for o in out if o[0] + 10.0 <= now]:
            slow.stats.finish(token, started + 10.0)
            out.remove((started, token))
        out.append((now, slow.stats.start(now)))
        probes += len(prober.due([primary, slow], now))
    assert probes == 0


def test_a_backend_whose_failures_take_long_to_arrive_is_still_probed_less_and_less(make: MakeCandidate) -> None:
    # Down, each probe failing after 12 s (a timeout): the back-off counts from the latest failure's arrival
    # or the latest probe, not from the failed request's send, which is always more than 8 s ago.
    primary, down = make("primary"), make("down")
    prober = ShadowProber()
    sent: list[float] = []
    out: list[tuple[float, int]] = []
    for step in range(1200):  # 120 s, an app request every 100 ms
        now = step / 10
        for started, token in [o for o in out if o[0] + 12.0 <= now]:
            down.stats.finish(token, started + 12.0, FailureKind.TIMEOUT)
            prober.done("down", started)
            out.remove((started, token))
        for _ in prober.due([primary, down], now):
            sent.append(now)
            out.append((now, down.stats.start(now, shadow=True)))
    late = [b - a for a, b in itertools.pairwise(sent) if a > 60.0]
    assert late and min(late) >= 7.9, sent  # one probe per 8 s once it has failed more than a few times
