"""LLMPolicy enforcement through a running sidecar (real sockets, simulated providers, the official SDKs):
what an app gets when a budget or rate limit refuses, downgrades or only observes, and what is charged."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anthropic
import openai
import pytest

from llmroute.http import Request, StreamingResponse
from llmroute.model.policy import Allowed, Budget, Policy, QuotaKey, RateLimit, Selector, Window
from llmroute.sidecar.app import SidecarApp
from llmroute.sim import Behavior, Latency

from .harness import Harness, chat_body, running

FAST = Behavior(latency=Latency.fixed(0.01), output_tokens=4)
T0 = 1_800_000_000.0  # the start of a UTC hour (and minute)
MONTH = Window(31 * 86400, calendar_month=True)
# $1 per output token, prompts free: a request capped at 4 output tokens reserves and costs $4.
DEAR = {"price": {"inputPerMTok": 0.0, "outputPerMTok": 1_000_000.0}}
CHEAP = {"price": {"inputPerMTok": 0.0, "outputPerMTok": 100_000.0}}  # mean price 50000 USD/MTok


class Clock:
    """The policies' wall clock, held mid-window so no window turns during a test."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def enforce(h: Harness, *policies: Policy) -> Clock:
    clock = Clock(T0 + 30)
    h.sidecar.ledger.clock = clock
    h.sidecar.admission.apply(policies)
    return clock


def budget_policy(limit: float, **extra: object) -> Policy:
    return Policy("default", "shop-limits", tier="growth", budgets=(Budget("monthly", MONTH, limit, **extra),))  # type: ignore[arg-type]


def used(h: Harness, limit: str, quantity: str = "usd") -> tuple[float, float]:
    quota = h.sidecar.ledger.quotas[QuotaKey("default", "shop-limits", limit, quantity)]  # type: ignore[arg-type]
    return quota.used, quota.reserved


def metric(h: Harness, decision: str, limit: str = "monthly") -> float:
    value = h.sidecar.metrics.registry.get_sample_value(
        "llmroute_policy_decisions_total",
        {"policy": "default/shop-limits", "limit": limit, "tier": "growth", "decision": decision},
    )
    return value or 0.0


async def test_a_spent_budget_answers_429_with_its_code_retry_after_and_policy(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        enforce(h, budget_policy(10.0))
        client = h.client()
        for _ in range(2):  # $4 each: 8 of 10 spent, and the next estimate ($4) does not fit
            raw = await client.chat.completions.with_raw_response.create(**chat_body(max_tokens=4))
            assert float(raw.headers["x-llmroute-cost-usd"]) == pytest.approx(4.0)
        assert used(h, "monthly") == pytest.approx((8.0, 0.0))

        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(**chat_body(max_tokens=4))
        response = refused.value.response
        assert response.status_code == 429
        assert refused.value.code == "budget_exceeded"
        assert response.headers["x-llmroute-policy"] == "shop-limits"
        # The sidecar holds the whole limit (local mode): nothing refills before the month turns.
        assert int(response.headers["retry-after"]) > 86400 - 30
        assert "LLMPolicy default/shop-limits budget monthly: 10 USD" in refused.value.message
        assert h.sims["dear"].stats.requests == 2  # the refused request never reached a backend
        assert metric(h, "rejected") == 1
        async with h.http() as http:  # the quota's gauges, as Prometheus scrapes them
            scraped = (await http.get(f"{h.admin_url}/metrics")).text
        labels = 'limit="monthly",policy="default/shop-limits",quantity="usd",tier="growth"'
        assert f"llmroute_policy_used{{{labels}}} 8.0" in scraped
        assert f"llmroute_policy_granted{{{labels}}} 10.0" in scraped

        # A smaller request still fits what is left.
        raw = await client.chat.completions.with_raw_response.create(**chat_body(max_tokens=2))
        assert raw.http_response.status_code == 200
        assert used(h, "monthly")[0] == pytest.approx(10.0)


async def test_the_429_keeps_the_anthropic_shape_on_messages(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        enforce(h, budget_policy(1.0))
        with pytest.raises(anthropic.RateLimitError) as refused:
            await h.anthropic().messages.create(
                model="chat", max_tokens=4, messages=[{"role": "user", "content": "hello"}]
            )
        assert refused.value.response.headers["x-llmroute-policy"] == "shop-limits"
        body = refused.value.body
        assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
        assert body["error"]["message"].startswith("budget_exceeded: ")  # Anthropic's shape has no code field


async def test_a_requests_per_minute_limit_counts_requests_of_its_priorities_only(tmp_path: Path) -> None:
    async with running(tmp_path, {"free": FAST}) as h:
        limit = RateLimit("batch-rpm", requests_per_minute=2, priorities=frozenset({"batch"}))
        clock = enforce(h, Policy("default", "shop-limits", tier="growth", rate_limits=(limit,)))
        batch = h.client(default_headers={"x-llmroute-priority": "batch"})
        for _ in range(2):
            await batch.chat.completions.create(**chat_body())
        with pytest.raises(openai.RateLimitError) as refused:
            await batch.chat.completions.create(**chat_body())
        assert refused.value.code == "rate_limit_exceeded"
        assert refused.value.response.headers["retry-after"] == "30"  # until the minute turns
        assert refused.value.response.headers["x-llmroute-policy"] == "shop-limits"
        await h.client().chat.completions.create(**chat_body())  # normal priority: not this limit's

        clock.now = T0 + 60  # the next minute
        await batch.chat.completions.create(**chat_body())
        assert used(h, "batch-rpm", "requests") == (1.0, 0.0)


async def test_a_tokens_per_minute_limit_reserves_prompt_and_max_tokens_and_settles_real_tokens(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, {"free": FAST}) as h:
        enforce(h, Policy("default", "shop-limits", rate_limits=(RateLimit("tpm", tokens_per_minute=40),)))
        client = h.client()
        completion = await client.chat.completions.create(**chat_body(max_tokens=30))
        assert completion.usage is not None
        real = completion.usage.prompt_tokens + completion.usage.completion_tokens
        assert used(h, "tpm", "tokens") == (real, 0.0)  # estimated ~31, settled on what the backend reported
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(**chat_body(max_tokens=40 - real))  # 1 prompt token too many


async def test_downgrade_answers_from_cheaper_backends_only_and_says_so(tmp_path: Path) -> None:
    backends = {"dear": FAST, "cheap": FAST}
    extra = {"dear": DEAR, "cheap": CHEAP}
    async with running(tmp_path, backends, backend_extra=extra, spec={"strategy": "ordered"}) as h:
        enforce(h, budget_policy(5.0, action="Downgrade", downgrade_max_price_per_mtok=60_000.0))
        client = h.client()
        raw = await client.chat.completions.with_raw_response.create(**chat_body(max_tokens=4))
        assert raw.headers["x-llmroute-backend"] == "dear"
        assert "x-llmroute-downgraded" not in raw.headers
        for _ in range(3):  # $4 spent of 5: every later request goes to the cheap backend, past the limit
            raw = await client.chat.completions.with_raw_response.create(**chat_body(max_tokens=4))
            assert raw.headers["x-llmroute-backend"] == "cheap"
            assert raw.headers["x-llmroute-downgraded"] == "shop-limits"
        assert h.sims["dear"].stats.requests == 1
        assert used(h, "monthly")[0] == pytest.approx(4.0 + 3 * 0.4)
        assert metric(h, "downgraded") == 3


async def test_downgrade_with_no_cheap_enough_backend_is_a_budget_429(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        enforce(h, budget_policy(1.0, action="Downgrade", downgrade_max_price_per_mtok=1.0))
        with pytest.raises(openai.RateLimitError) as refused:
            await h.client().chat.completions.create(**chat_body(max_tokens=4))
        assert refused.value.code == "budget_exceeded"
        assert "no backend of the route is cheap enough" in refused.value.message


async def test_observe_never_refuses_but_counts(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        enforce(h, budget_policy(1.0, action="Observe"))
        for _ in range(3):
            await h.client().chat.completions.create(**chat_body(max_tokens=4))
        assert used(h, "monthly")[0] == pytest.approx(12.0)
        assert metric(h, "observed") == 3


async def test_a_limit_for_other_pods_or_routes_does_not_apply(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        elsewhere = Selector({"app": "reports"})
        enforce(
            h,
            Policy(
                "default",
                "shop-limits",
                budgets=(
                    Budget("reports", MONTH, 0.5, workload_selector=elsewhere),
                    Budget("support", MONTH, 0.5, routes=frozenset({"support-chat"})),
                ),
            ),
        )
        for _ in range(2):  # either budget would refuse a $4 request
            await h.client().chat.completions.create(**chat_body(max_tokens=4))
        assert used(h, "support") == (0.0, 0.0)  # a route of this namespace, not this one
        assert list(h.sidecar.ledger.quotas) == [QuotaKey("default", "shop-limits", "support", "usd")]


async def test_a_request_no_backend_answered_is_charged_nothing_but_counts_as_a_request(tmp_path: Path) -> None:
    broken = Behavior(latency=Latency.fixed(0.01), error_rate=1.0)
    async with running(tmp_path, {"dear": broken}, backend_extra={"dear": DEAR}) as h:
        enforce(
            h,
            Policy(
                "default",
                "shop-limits",
                budgets=(Budget("monthly", MONTH, 100.0),),
                rate_limits=(RateLimit("rpm", requests_per_minute=100),),
            ),
        )
        with pytest.raises(openai.APIStatusError):
            await h.client().chat.completions.create(**chat_body(max_tokens=4))
        assert used(h, "monthly") == (0.0, 0.0)
        assert used(h, "rpm", "requests") == (1.0, 0.0)


async def test_a_stream_settles_at_its_real_cost_and_one_the_app_leaves_at_its_estimate(tmp_path: Path) -> None:
    slow = Behavior(latency=Latency.fixed(0.01), output_tokens=4, token_delay=0.2)
    async with running(tmp_path, {"dear": slow}, backend_extra={"dear": DEAR}) as h:
        enforce(h, budget_policy(100.0))
        stream = await h.client().chat.completions.create(**chat_body(max_tokens=8), stream=True)
        chunks = [chunk async for chunk in stream]
        assert chunks
        assert used(h, "monthly") == pytest.approx((4.0, 0.0))  # 4 tokens delivered of 8 reserved

        body = chat_body(max_tokens=8, stream=True)
        async with h.http() as http, http.stream("POST", "/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for _ in response.aiter_bytes():
                break  # the app leaves after the first chunk
        for _ in range(200):
            if used(h, "monthly")[1] == 0.0:
                break
            await asyncio.sleep(0.01)  # the sidecar settles once it has noticed the app left
        assert used(h, "monthly") == pytest.approx((4.0 + 8.0, 0.0))  # charged the whole reservation


async def test_a_continued_stream_counts_the_tokens_of_every_attempt_the_providers_billed(tmp_path: Path) -> None:
    # The first backend sends "token" and drops the connection; the prefill backend continues from it. Both
    # providers bill: the first the prompt and the text it delivered, the second its own usage (whose prompt
    # carries that text). The tokens quota counts both; the requests quota one request.
    broken = Behavior(latency=Latency.fixed(0.01), midstream_failure_rate=1.0, output_tokens=6)
    backends = {"broken": broken, "rescuer": FAST}
    extra = {"rescuer": {"capabilities": ["prefill"]}}
    async with running(tmp_path, backends, spec={"strategy": "ordered"}, backend_extra=extra) as h:
        limits = RateLimit("tpm", requests_per_minute=100, tokens_per_minute=100_000)
        enforce(h, Policy("default", "shop-limits", tier="growth", rate_limits=(limits,)))
        ask = [{"role": "user", "content": "Tell me a story"}]  # 15 characters: 3 tokens as the sidecar estimates
        stream = await h.client().chat.completions.create(
            model="chat", messages=ask, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "token" + "token token token token"  # one answer from two attempts
        usage = chunks[-1].usage
        assert usage is not None and usage.completion_tokens == 4 + 1  # the continuation's 4 + the 1 delivered
        # The app is told every attempt's tokens: the rescuer's prompt (with the prefill) and its 4, and the
        # broken backend's prompt (3, estimated) and the token it delivered. The quota counts the same.
        billed = usage.prompt_tokens + usage.completion_tokens
        assert billed > 3 + 1 + 4
        assert used(h, "tpm", "tokens") == (billed, 0.0)
        assert used(h, "tpm", "requests") == (1.0, 0.0)
        async with h.http() as http:
            metrics = (await http.get(f"{h.admin_url}/metrics")).text
        labels = 'limit="tpm",policy="default/shop-limits",quantity="tokens",tier="growth"'
        assert f"llmroute_policy_used{{{labels}}} {float(billed)}" in metrics


async def test_backends_outside_allowed_are_left_out_and_a_route_with_none_left_is_refused(tmp_path: Path) -> None:
    backends = {"dear": FAST, "cheap": FAST}
    extra = {"dear": DEAR, "cheap": CHEAP}
    async with running(tmp_path, backends, backend_extra=extra, spec={"strategy": "ordered"}) as h:
        enforce(h, Policy("default", "shop-limits", allowed=Allowed(max_price_per_mtok=60_000.0)))
        for _ in range(2):
            raw = await h.client().chat.completions.with_raw_response.create(**chat_body(max_tokens=4))
            assert raw.headers["x-llmroute-backend"] == "cheap"
        assert h.sims["dear"].stats.requests == 0

        enforce(h, Policy("default", "shop-limits", allowed=Allowed(providers=frozenset({"anthropic"}))))
        async with h.http() as http:
            response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "policy_violation"
        assert "provider openai is not in allowed.providers" in response.json()["error"]["message"]


async def test_no_policy_means_no_admission_at_all(tmp_path: Path) -> None:
    async with running(tmp_path, {"dear": FAST}, backend_extra={"dear": DEAR}) as h:
        assert not h.sidecar.admission.active
        async with h.http() as http:
            response = await http.post("/chat/completions", json=chat_body())
        assert response.status_code == 200
        assert h.sidecar.ledger.quotas == {}


async def test_a_request_that_leaves_while_waiting_for_a_slot_or_an_unsent_stream_holds_nothing(
    tmp_path: Path,
) -> None:
    slow = Behavior(latency=Latency.fixed(1.0), output_tokens=4)
    spec = {"priorities": {"batch": {"maxConcurrency": 1, "timeout": "10s"}}}
    async with running(tmp_path, {"dear": slow}, backend_extra={"dear": DEAR}, spec=spec) as h:
        enforce(h, budget_policy(100.0))
        s = h.sidecar
        app = SidecarApp(s.router, s.dispatcher, s.metrics, admission=s.admission)  # the sidecar's own parts
        headers = {"content-type": "application/json", "x-llmroute-priority": "batch"}

        def request(**extra: object) -> Request:
            return Request("POST", "/v1/chat/completions", "", headers, json.dumps(chat_body(**extra)).encode(), None)

        holder = asyncio.ensure_future(app(request(max_tokens=4)))  # takes the one batch slot for a second
        await asyncio.sleep(0.2)
        with pytest.raises(TimeoutError):  # the app gives up while waiting for the slot
            await asyncio.wait_for(app(request(max_tokens=4)), 0.2)
        await holder
        assert used(h, "monthly") == pytest.approx((4.0, 0.0))  # the one that left: nothing reserved, no cost

        streamed = await asyncio.wait_for(app(request(max_tokens=4, stream=True)), 5)
        assert isinstance(streamed, StreamingResponse)
        await streamed.chunks.aclose()  # as the server does when the app left before the answer was sent
        assert used(h, "monthly") == pytest.approx((8.0, 0.0))  # unknown usage: charged its estimate
