"""Routing behaviour a user relies on: latency-aware choice, failover, hedging, caps, ejection, probes."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from llmroute.sim import Behavior, Latency

from .harness import Harness, chat_body, running

FAST = Behavior(latency=Latency.fixed(0.02))
SLOW = Behavior(latency=Latency.fixed(0.25))


async def send(http: httpx.AsyncClient, n: int, **headers: str) -> list[httpx.Response]:
    return [await http.post("/chat/completions", json=chat_body(), headers=headers) for _ in range(n)]


async def test_latency_strategy_sends_most_traffic_to_the_fastest(tmp_path: Path) -> None:
    async with running(tmp_path, {"slow": SLOW, "fast": FAST}) as h, h.http() as http:
        responses = await send(http, 40)
        assert all(r.status_code == 200 for r in responses)
        share = Counter(r.headers["x-llmroute-backend"] for r in responses)
        assert share["fast"] >= 36, share


async def test_degraded_backend_loses_traffic_at_once(tmp_path: Path) -> None:
    async with (
        running(tmp_path, {"primary": FAST, "other": Behavior(latency=Latency.fixed(0.08))}) as h,
        h.http() as http,
    ):
        await send(http, 10)
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(3.0)))
        started = time.monotonic()
        responses = await send(http, 20)
        elapsed = time.monotonic() - started
        assert all(r.status_code == 200 for r in responses)
        late = Counter(r.headers["x-llmroute-backend"] for r in responses[5:])
        assert late == {"other": 15}, late
        assert elapsed < 8, f"20 requests took {elapsed:.1f} s: the slow backend kept getting traffic"


async def test_failover_on_hang_within_the_deadline(tmp_path: Path) -> None:
    spec = {"strategy": "ordered", "priorities": {"normal": {"timeout": "2s"}}}
    async with running(tmp_path, {"hang": Behavior(hang_rate=1.0), "backup": FAST}, spec=spec) as h, h.http() as http:
        started = time.monotonic()
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 200
        assert response.headers["x-llmroute-backend"] == "backup"
        assert response.headers["x-llmroute-attempts"] == "2"
        assert time.monotonic() - started < 2.0


async def test_failover_on_5xx_429_and_reset(tmp_path: Path) -> None:
    for bad in (
        Behavior(error_rate=1.0, error_statuses=(502,)),
        Behavior(rate_limit_rate=1.0, retry_after=30),
        Behavior(reset_rate=1.0),
    ):
        async with running(tmp_path, {"bad": bad, "good": FAST}, spec={"strategy": "ordered"}) as h, h.http() as http:
            responses = await send(http, 5)
            assert [r.status_code for r in responses] == [200] * 5, bad
            assert {r.headers["x-llmroute-backend"] for r in responses} == {"good"}


async def test_rate_limited_backend_is_ejected_for_retry_after(tmp_path: Path) -> None:
    limited = Behavior(rate_limit_rate=1.0, retry_after=30)
    async with (
        running(tmp_path, {"limited": limited, "good": FAST}, spec={"strategy": "ordered"}) as h,
        h.http() as http,
    ):
        await send(http, 5)
        # The 429 ejected it for Retry-After: only the first request tried it.
        assert h.sims["limited"].stats.by_path["POST /v1/chat/completions"] == 1
        backends = (await httpx.AsyncClient(base_url=h.admin_url).get("/debug/backends")).json()
        limited_state = next(b for b in backends["default/chat"] if b["name"] == "limited")
        assert limited_state["ejection"]["state"] == "ejected"
        assert limited_state["ejection"]["reason"] == "rate-limited"


async def test_ejected_backend_returns_after_a_free_probe(tmp_path: Path) -> None:
    spec = {"strategy": "ordered", "outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "500ms"}}
    broken = Behavior(error_rate=1.0, error_statuses=(500,))
    async with running(tmp_path, {"flaky": broken, "good": FAST}, spec=spec) as h, h.http() as http:
        await send(http, 4)
        completions_while_broken = h.sims["flaky"].stats.by_path["POST /v1/chat/completions"]
        h.sims["flaky"].set_behavior(FAST)
        for _ in range(50):  # the prober runs every 0.5 s; the ejection lasts 0.5 s
            if h.sims["flaky"].stats.by_path["GET /v1/models"]:
                break
            await asyncio.sleep(0.1)
        assert h.sims["flaky"].stats.by_path["GET /v1/models"] >= 1, "ejected backend was never probed"
        await asyncio.sleep(0.2)
        responses = await send(http, 3)
        assert responses[-1].headers["x-llmroute-backend"] == "flaky"
        # Between ejection and return it got only GET /models probes, never paid completions.
        assert completions_while_broken == 2


async def test_critical_requests_hedge_to_the_second_choice(tmp_path: Path) -> None:
    spec = {"strategy": "ordered", "priorities": {"critical": {"timeout": "2s", "hedge": True}}}
    async with running(tmp_path, {"primary": FAST, "second": FAST}, spec=spec) as h, h.http() as http:
        await send(http, 10, **{"x-llmroute-priority": "critical"})  # learn the primary's p95 (~20 ms)
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(1.5)))
        started = time.monotonic()
        response = await http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-priority": "critical"})
        assert response.status_code == 200
        assert response.headers["x-llmroute-backend"] == "second"
        assert time.monotonic() - started < 1.0
        metrics = (await httpx.AsyncClient(base_url=h.admin_url).get("/metrics")).text
        assert re.search(r'llmroute_hedges_total\{result="won",route="chat"\} [1-9]', metrics), metrics


async def test_batch_concurrency_cap(tmp_path: Path) -> None:
    spec = {"priorities": {"batch": {"maxConcurrency": 2, "timeout": "10s"}}}
    slowish = Behavior(latency=Latency.fixed(0.2))
    async with running(tmp_path, {"only": slowish}, spec=spec) as h, h.http() as http:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, h.sidecar.router.by_model["chat"].candidates[0].stats.in_flight)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        responses = await asyncio.gather(
            *(
                http.post("/chat/completions", json=chat_body(), headers={"x-llmroute-priority": "batch"})
                for _ in range(6)
            )
        )
        watcher.cancel()
        assert [r.status_code for r in responses] == [200] * 6
        assert peak == 2
        assert time.monotonic() - started >= 0.55  # three waves of two


async def test_stream_fails_over_before_the_first_byte(tmp_path: Path) -> None:
    async with running(
        tmp_path, {"bad": Behavior(error_rate=1.0, error_statuses=(503,)), "good": FAST}, spec={"strategy": "ordered"}
    ) as h:
        raw = await h.client().chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "x"}], stream=True
        )
        assert raw.headers["x-llmroute-backend"] == "good"
        chunks = [c async for c in raw.parse()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


async def test_stream_failing_after_first_byte_ends_with_an_error_event(tmp_path: Path) -> None:
    broken = Behavior(midstream_failure_rate=1.0, token_delay=0.01)
    async with running(tmp_path, {"broken": broken, "good": FAST}, spec={"strategy": "ordered"}) as h, h.http() as http:
        async with http.stream("POST", "/chat/completions", json=chat_body(stream=True)) as response:
            assert response.status_code == 200
            body = (await response.aread()).decode()
        events = [line for line in body.splitlines() if line.startswith("data: ")]
        assert events[0].startswith('data: {"id"')
        assert '"error"' in events[-1] and "mid-stream" in events[-1]
        assert response.headers["x-llmroute-backend"] == "broken"  # no silent switch once bytes reached the app


async def test_batch_requests_that_cannot_get_a_slot_in_time_get_504_and_free_nothing(tmp_path: Path) -> None:
    spec = {"priorities": {"batch": {"maxConcurrency": 1, "timeout": "10s"}}}
    async with running(tmp_path, {"only": Behavior(latency=Latency.fixed(0.4))}, spec=spec) as h, h.http() as http:
        batch = {"x-llmroute-priority": "batch"}
        slow = asyncio.create_task(http.post("/chat/completions", json=chat_body(), headers=batch))
        await asyncio.sleep(0.05)
        impatient = await http.post(
            "/chat/completions", json=chat_body(), headers={**batch, "x-llmroute-timeout-ms": "100"}
        )
        assert impatient.status_code == 504 and "batch slot" in impatient.json()["error"]["message"]
        assert (await slow).status_code == 200
        # The timed-out waiter did not give back a slot it never had: the cap still holds.
        gate = h.sidecar.router.by_model["chat"].gates["batch"]
        assert gate.active == 0 and gate.waiting == 0
        both = await asyncio.gather(
            *(http.post("/chat/completions", json=chat_body(), headers=batch) for _ in range(2))
        )
        assert [r.status_code for r in both] == [200, 200]


async def test_no_failover_to_a_backend_that_cannot_make_the_deadline(tmp_path: Path) -> None:
    # ok2s answers in 0.8 s, slow in 3 s; a 1.2 s deadline: cutting ok2s for slow would turn a good
    # answer into a 504.
    backends = {"ok2s": Behavior(latency=Latency.fixed(0.8)), "slow": Behavior(latency=Latency.fixed(3.0))}
    spec = {"priorities": {"normal": {"timeout": "1200ms"}}}
    async with running(tmp_path, backends, spec=spec) as h, h.http() as http:
        batch = {"x-llmroute-priority": "batch"}
        await asyncio.gather(*(http.post("/chat/completions", json=chat_body(), headers=batch) for _ in range(4)))
        for _ in range(3):
            response = await http.post("/chat/completions", json=chat_body())
            assert response.status_code == 200, response.text
            assert response.headers["x-llmroute-backend"] == "ok2s"


async def test_a_request_stuck_on_a_backend_that_slowed_down_is_hedged(tmp_path: Path) -> None:
    # Normal requests do not hedge eagerly: a lone slow one gets a second request elsewhere only once it has
    # taken 3x its backend's p95 and 1 s more (the tail), instead of waiting out its 30 s deadline.
    spec = {"strategy": "ordered"}
    async with running(tmp_path, {"primary": FAST, "second": FAST}, spec=spec) as h, h.http() as http:
        await send(http, 10)
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(8.0)))
        started = time.monotonic()
        response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 200
        assert response.headers["x-llmroute-backend"] == "second"
        assert 1.0 < time.monotonic() - started < 2.0


async def test_requests_caught_on_a_backend_that_stalls_leave_it_at_its_p95(tmp_path: Path) -> None:
    # Several requests overdue on one backend at once: it has stalled, so each is hedged at its p95 (about
    # 20 ms here), not after the 1 s tail a lone slow request waits for.
    spec = {"strategy": "ordered"}
    async with running(tmp_path, {"primary": FAST, "second": FAST}, spec=spec) as h, h.http() as http:
        await send(http, 10)
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(8.0)))

        async def timed() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            response = await http.post("/chat/completions", json=chat_body())
            return response, time.monotonic() - started

        results = await asyncio.gather(*(timed() for _ in range(3)))
        assert [r.status_code for r, _ in results] == [200] * 3
        assert [r.headers["x-llmroute-backend"] for r, _ in results] == ["second"] * 3
        assert [r.headers["x-llmroute-attempts"] for r, _ in results] == ["2"] * 3
        assert max(elapsed for _, elapsed in results) < 0.6, results
        # Until it answers again, `ordered` passes over the stalled backend instead of trying it first.
        [later] = await send(http, 1)
        assert (later.headers["x-llmroute-backend"], later.headers["x-llmroute-attempts"]) == ("second", "1")


async def test_a_hedge_the_retry_budget_refused_goes_out_once_the_budget_allows_it(tmp_path: Path) -> None:
    # The retry budget has nothing left for hedges when a request's hedge is due: the hedge is asked for again
    # and goes out once new requests add to the budget, instead of the request waiting on the slowed backend
    # until its deadline (a 504 naming "the retry budget was spent").
    spec = {
        "strategy": "ordered",
        "priorities": {"critical": {"timeout": "5s", "hedge": True}},
        "retry": {"attempts": 2, "budgetPercent": 20},
    }
    async with running(tmp_path, {"primary": FAST, "second": FAST}, spec=spec) as h, h.http() as http:
        critical = {"x-llmroute-priority": "critical"}
        await send(http, 10, **critical)  # the primary's p95 is about 20 ms
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(8.0)))
        budget = next(iter(h.sidecar.router.runtimes.values())).retry_budget
        while budget.try_acquire_retry(time.monotonic(), hedge=True):
            pass
        hedged_before = await _hedges_sent(h, http)  # a warm-up answer may come just after the primary's p95
        pending = asyncio.create_task(http.post("/chat/completions", json=chat_body(), headers=critical))
        await asyncio.sleep(0.5)  # refused and asked for again meanwhile
        assert not pending.done()
        for _ in range(5):  # 20% of five requests: one more retry
            budget.record_request(time.monotonic())
        response = await pending
        assert response.status_code == 200, response.text
        assert response.headers["x-llmroute-backend"] == "second"
        # The hedge itself, asked for again, answered: not the deadline rescue (a retry, not a hedge).
        assert await _hedges_sent(h, http) - hedged_before == 1
        # Asked for again every 0.1 s while refused, it is still one retry the budget did not allow.
        metrics = (await http.get(f"{h.admin_url}/metrics")).text
        counted = re.search(r'^llmroute_retry_budget_exhausted_total\{route="chat"\} (\S+)$', metrics, re.MULTILINE)
        assert counted is not None and float(counted.group(1)) == 1.0, counted


async def test_requests_caught_on_a_backend_that_slows_down_all_hedge_at_once(tmp_path: Path) -> None:
    # 45 critical requests are out when the primary slows from 0.5 s to 8 s: each hedges after the primary's
    # p95, all within the same half second (one sent after that would go to `second` first, the primary
    # stalled). Before, the budget allowed 10 a second beyond its share of requests, and the hedges past the
    # third second's allowance were refused until the 3 s deadline (504 "the retry budget was spent"); its
    # reserve of 10 a second now counts over its 10 s window, as Finagle's and tower's do, and covers them.
    spec = {
        "strategy": "ordered",
        "priorities": {"critical": {"timeout": "3s", "hedge": True}},
        "retry": {"attempts": 2, "budgetPercent": 0},
    }
    backends = {"primary": Behavior(latency=Latency.fixed(0.5)), "second": Behavior(latency=Latency.fixed(0.4))}
    async with running(tmp_path, backends, spec=spec) as h, h.http() as http:
        critical = {"x-llmroute-priority": "critical"}
        await send(http, 4, **critical)
        hedged_before = await _hedges_sent(h, http)  # a warm-up answer may come just after the primary's p95
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(8.0)))
        responses = await asyncio.gather(
            *(http.post("/chat/completions", json=chat_body(), headers=critical) for _ in range(45))
        )
        failed = [r.text for r in responses if r.status_code != 200]
        assert not failed, (len(failed), failed[0])
        answered = Counter((r.headers["x-llmroute-backend"], r.headers["x-llmroute-attempts"]) for r in responses)
        # Each request sent to the primary hedged; one that reached the sidecar after the primary had stalled
        # (a machine slow to deliver the 45) went to `second` first.
        assert set(answered) <= {("second", "2"), ("second", "1")} and answered[("second", "2")] >= 1, answered
        # They hedged, not waited for the rescue at the deadline less the next backend's doubled p95.
        assert await _hedges_sent(h, http) - hedged_before == answered[("second", "2")], answered


async def _hedges_sent(h: Harness, http: httpx.AsyncClient) -> float:
    metrics = (await http.get(f"{h.admin_url}/metrics")).text
    sent = re.search(r'^llmroute_hedges_total\{result="sent",route="chat"\} (\S+)$', metrics, re.MULTILINE)
    return 0.0 if sent is None else float(sent.group(1))


async def test_a_request_on_a_healthy_backend_is_not_sent_twice_for_a_tight_deadline(tmp_path: Path) -> None:
    # The next backend needs 2.4 s and the deadline is 5 s: the last moment it could still answer in time with
    # room to spare (its doubled p95) comes 0.2 s in. The primary answers in 0.6 s, before it is late (its p95
    # is 1.2 s), so no second request goes out: before, every request was sent twice, each copy a retry
    # against the budget.
    spec = {
        "strategy": "ordered",
        "priorities": {"normal": {"timeout": "5s"}},
        "retry": {"attempts": 2, "retryOn": ["5xx", "timeout"]},
    }
    backends = {"primary": Behavior(error_rate=1.0), "next": Behavior(latency=Latency.fixed(2.4))}
    async with running(tmp_path, backends, spec=spec) as h, h.http() as http:
        for _ in range(2):  # fewer failures than eject a backend: `next` answers, and has a p95
            [response] = await send(http, 1)
            assert response.headers["x-llmroute-backend"] == "next"
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(1.2)))
        await send(http, 1)  # the primary's p95 is about 1.2 s
        h.sims["primary"].set_behavior(Behavior(latency=Latency.fixed(0.6)))
        responses = await send(http, 3)
        assert [r.status_code for r in responses] == [200] * 3
        answered = [(r.headers["x-llmroute-backend"], r.headers["x-llmroute-attempts"]) for r in responses]
        assert answered == [("primary", "1")] * 3


async def test_after_a_failover_the_hedge_is_timed_by_the_backend_now_answering(tmp_path: Path) -> None:
    # A critical request fails at once on the first backend and fails over to the second, which has
    # slowed down; its hedge goes out at the second backend's p95 (about 20 ms), not at a time worked out
    # for the first backend (which has never answered, so half the 10 s deadline).
    spec = {"strategy": "ordered", "retry": {"attempts": 2}}
    broken = Behavior(error_rate=1.0)
    async with running(tmp_path, {"first": broken, "second": FAST, "third": FAST}, spec=spec) as h, h.http() as http:
        for _ in range(3):  # fewer failures than eject a backend
            await send(http, 1)
            await asyncio.sleep(0.1)  # the shadow probes answer: second and third have a p95
        h.sims["second"].set_behavior(Behavior(latency=Latency.fixed(3.0)))
        started = time.monotonic()
        [response] = await send(http, 1, **{"x-llmroute-priority": "critical"})
        assert response.status_code == 200
        assert (response.headers["x-llmroute-backend"], response.headers["x-llmroute-attempts"]) == ("third", "3")
        assert time.monotonic() - started < 1.0


async def test_ordered_passes_over_a_backend_expected_to_miss_the_deadline(tmp_path: Path) -> None:
    # second is quicker but not far quicker (see test_plan for that case): with time for first, its turn holds.
    slow, fast = Behavior(latency=Latency.fixed(1.5)), Behavior(latency=Latency.fixed(0.6))
    spec = {"strategy": "ordered", "priorities": {"normal": {"timeout": "1s"}, "batch": {"timeout": "10s"}}}
    async with running(tmp_path, {"first": slow, "second": fast}, spec=spec) as h, h.http() as http:
        await send(http, 2, **{"x-llmroute-priority": "batch"})  # both answer once: first is known to take 1.5 s
        responses = await send(http, 5)
        assert [r.status_code for r in responses] == [200] * 5
        assert {r.headers["x-llmroute-backend"] for r in responses} == {"second"}
        assert {r.headers["x-llmroute-attempts"] for r in responses} == {"1"}
        # With time for it, the order holds again.
        batch = await send(http, 2, **{"x-llmroute-priority": "batch"})
        assert {r.headers["x-llmroute-backend"] for r in batch} == {"first"}


async def test_a_reasoning_model_that_refuses_max_tokens_is_probed_with_max_completion_tokens(tmp_path: Path) -> None:
    # OpenAI's reasoning models refuse `max_tokens` with a 400 `unsupported_parameter` naming it. All traffic
    # goes to "primary" (ordered), so "reasoning" is measured only by shadow probes. The probe's first body
    # caps the output with `max_tokens` (what most compatible servers take); after the refusal the probes use
    # `max_completion_tokens` and the backend gets a latency estimate. Before, every probe was refused (and
    # paused 30 s), and the backend was never measured.
    reasoning = Behavior(latency=Latency.fixed(0.05), unsupported_params=("max_tokens",))
    async with (
        running(tmp_path, {"primary": FAST, "reasoning": reasoning}, spec={"strategy": "ordered"}) as h,
        h.http() as http,
    ):
        started = time.monotonic()
        while h.sims["reasoning"].stats.by_outcome["ok"] < 2 and time.monotonic() - started < 15:
            assert {r.headers["x-llmroute-backend"] for r in await send(http, 1)} == {"primary"}
            await asyncio.sleep(0.1)
        outcomes = h.sims["reasoning"].stats.by_outcome
        # One refusal, or two when a second probe went out before the first came back.
        assert outcomes["ok"] >= 2 and 1 <= outcomes["unsupported_parameter"] <= 2, outcomes
        backends = (await http.get(f"{h.admin_url}/debug/backends")).json()
        measured = next(b for b in backends["default/chat"] if b["name"] == "reasoning")
        assert measured["latency_ewma_s"] is not None and measured["latency_ewma_s"] >= 0.05, measured
        assert measured["shadow_probes"] == {"chat_output_cap": "max_completion_tokens", "refused_pause_s": None}


async def _served(http: httpx.AsyncClient, *, stream: bool) -> str:
    """Send one chat request (a stream, read to its end, when `stream`); the backend that answered it."""
    async with http.stream("POST", "/chat/completions", json=chat_body(stream=stream)) as response:
        await response.aread()
        assert response.status_code == 200, response.text
        return response.headers["x-llmroute-backend"]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_streams_go_to_the_backend_with_the_fastest_first_token_though_it_never_had_a_stream(
    tmp_path: Path, kind: str
) -> None:
    # "chatty" writes long answers (0.5 s, as JSON or streamed) but starts them at once (first token after
    # 0.02 s); "steady" takes 0.1 s either way. JSON traffic first, so neither has had a stream: streams then
    # rank both by their JSON answers, and go to steady. Shadow probes chosen by a stream request are
    # streamed, so chatty's first token is measured and the streams move to it. With JSON probes only, they
    # never did: chatty kept being ranked for streams by its whole JSON answer. An Anthropic backend is probed
    # through its own Messages API, which must be asked for a stream in the body.
    steady = Behavior(latency=Latency.fixed(0.1))
    chatty = Behavior(latency=Latency.fixed(0.5), ttft=Latency.fixed(0.02), token_delay=0.03)  # 16 tokens: 0.5 s
    async with running(tmp_path, {"steady": steady, "chatty": (kind, chatty)}) as h, h.http() as http:
        await send(http, 10)
        served: list[str] = []
        started = time.monotonic()
        while served[-5:] != ["chatty"] * 5 and time.monotonic() - started < 20:
            served.append(await _served(http, stream=True))
            await asyncio.sleep(0.05)
        assert served[-5:] == ["chatty"] * 5, Counter(served)
        # JSON requests are still ranked by whole answers: they stay on steady.
        assert {r.headers["x-llmroute-backend"] for r in await send(http, 5)} == {"steady"}
        # And no probe failed: a probe that the backend answered as JSON would have read as a broken stream.
        metrics = (await http.get(f"{h.admin_url}/metrics")).text
        attempts = 'llmroute_upstream_attempts_total{backend="chatty",outcome="%s",route="chat"}'
        assert attempts % "5xx" not in metrics
        assert re.search("^" + re.escape(attempts % "shadow") + " [1-9]", metrics, re.MULTILINE), metrics


async def test_streams_return_to_a_recovered_backend_that_already_carries_the_json_traffic(tmp_path: Path) -> None:
    # "b" is slow while only streams are sent, so its first tokens are known to take 1 s. It recovers, and
    # JSON requests return to it. Streams must return too: its first tokens are news no JSON answer brings, so
    # a stream request probes it (streamed) although the app's JSON requests keep it busy. Before, the app's
    # JSON requests kept it "fresh", it was never probed, and streams stayed on "a" for good.
    a = Behavior(latency=Latency.fixed(0.3), ttft=Latency.fixed(0.1), token_delay=0.013)
    slow = Behavior(latency=Latency.fixed(1.0))
    async with running(tmp_path, {"a": a, "b": slow}) as h, h.http() as http:
        for _ in range(8):
            await _served(http, stream=True)
        h.sims["b"].set_behavior(Behavior(latency=Latency.fixed(0.2), ttft=Latency.fixed(0.02), token_delay=0.011))
        json_served: list[str] = []
        started = time.monotonic()
        while json_served[-5:] != ["b"] * 5 and time.monotonic() - started < 20:
            json_served.append(await _served(http, stream=False))
            await asyncio.sleep(0.05)
        assert json_served[-5:] == ["b"] * 5, Counter(json_served)  # JSON traffic came back to b
        streams_served: list[str] = []
        started = time.monotonic()
        while streams_served[-5:] != ["b"] * 5 and time.monotonic() - started < 20:
            await _served(http, stream=False)  # JSON traffic goes on (to b, unless a slow moment sends one to a)
            streams_served.append(await _served(http, stream=True))
            await asyncio.sleep(0.05)
        assert streams_served[-5:] == ["b"] * 5, Counter(streams_served)
