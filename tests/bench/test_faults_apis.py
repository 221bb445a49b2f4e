"""bench/faults through every inbound API: the fault provider speaks each API's wire format well enough that the
API's official SDK (openai for chat and Responses, anthropic for Messages) reads the healthy answer whole, and
the scores of the rows follow what the SDK really handed the app: the bench's own cell run, the direct arm,
against a real provider on a real socket."""

from __future__ import annotations

import anthropic
import pytest

from bench.faults import app
from bench.faults.arms import BACKENDS
from bench.faults.catalogue import CATALOGUE, Fault
from bench.faults.provider import ANSWER, FaultProvider
from bench.faults.run import Cell, run
from bench.faults.wire import WIRES, count_usage

APIS = list(WIRES)
FIRST_TEN_WORDS = " ".join(ANSWER.split(" ")[:10]) + " "


def fault(key: str) -> Fault:
    return next(f for f in CATALOGUE if f.key == key)


async def direct(api: str, key: str) -> Cell:
    """Run one catalogue fault on the direct arm: the API's SDK with its own retries, straight to the provider."""
    primary = FaultProvider(BACKENDS[api].primary, fault(key).script)
    await primary.start()
    try:
        cell = Cell(fault(key), api, "direct", primary, None)
        await run(cell)
    finally:
        await primary.stop()
    return cell


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_sdk_reads_the_healthy_answer_whole_with_model_and_usage(api: str, stream: bool) -> None:
    provider = FaultProvider(BACKENDS[api].primary)
    await provider.start()
    try:
        async with app.client(api, provider.root, timeout=10, retries=0) as client:
            got = await app.ask(api, client, BACKENDS[api].primary, stream)
    finally:
        await provider.stop()
    assert (got.error, got.text) == ("", ANSWER)
    assert got.model == BACKENDS[api].primary
    assert got.usage == count_usage(app.QUESTION, ANSWER)
    assert [wire_request.get("stream") is True for wire_request in provider.requests] == [stream]


@pytest.mark.parametrize("api", APIS)
async def test_a_retried_500_passes_with_the_whole_answer(api: str) -> None:
    cell = await direct(api, "500-once")
    assert [r.text for r in cell.received] == [ANSWER]
    assert [(s.kind, s.status, s.api) for s in cell.primary.seen] == [("status", 500, api), ("ok", 0, api)]
    assert cell.verdict.score == "pass"


@pytest.mark.parametrize("api", APIS)
async def test_a_cut_stream_is_an_error_with_the_first_ten_words_never_a_complete_answer(api: str) -> None:
    cell = await direct(api, "stream-cut")
    (got,) = cell.received
    assert got.text == FIRST_TEN_WORDS
    assert got.error  # the SDK raised: the body ended without its last chunk
    assert cell.verdict.score == "safe"


@pytest.mark.parametrize("api", APIS)
async def test_a_content_filter_reaches_the_app_as_the_providers_400_in_its_apis_words(api: str) -> None:
    cell = await direct(api, "content-filter")
    (got,) = cell.received
    assert got.status == 400
    assert WIRES[api].reason("content_filter") in got.error
    assert cell.verdict.score == "pass"
    assert len(cell.primary.seen) == 1  # a 400 is not retried by the SDK


async def test_the_anthropic_provider_continues_a_prefill_and_refuses_one_ending_in_whitespace() -> None:
    provider = FaultProvider(BACKENDS["messages"].fallback)
    await provider.start()
    prefix = FIRST_TEN_WORDS.rstrip()
    try:
        async with anthropic.AsyncAnthropic(base_url=provider.root, api_key="sk-bench", max_retries=0) as client:
            messages = [{"role": "user", "content": app.QUESTION}, {"role": "assistant", "content": prefix}]
            answer = await client.messages.create(model="m", max_tokens=1024, messages=messages)  # type: ignore[arg-type]
            with pytest.raises(anthropic.BadRequestError, match="trailing whitespace"):
                messages[-1]["content"] = FIRST_TEN_WORDS
                await client.messages.create(model="m", max_tokens=1024, messages=messages)  # type: ignore[arg-type]
    finally:
        await provider.stop()
    assert prefix + "".join(b.text for b in answer.content if b.type == "text") == ANSWER
