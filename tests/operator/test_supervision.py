"""The operator's background loops are supervised: a loop that crashes is logged, counted, posted as an Event
on the operator's Pod and restarted, and what it was doing is done after the restart."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import OPERATOR_POD

if TYPE_CHECKING:
    from conftest import Bench

STATUS_PATCH = ("PATCH", "/llmroutes/support/status")
CRASHES = 'llmroute_background_task_crashes_total{task="status writer"}'


async def _observed(bench: Bench, generation: int) -> dict[str, Any] | None:
    route = await bench.kube.get_route("shop", "support")
    status = (route or {}).get("status") or {}
    return status if status.get("observedGeneration") == generation else None


async def _crash_events(bench: Bench, count: int) -> list[dict[str, Any]] | None:
    events = [e for e in await bench.kube.events("default") if e["reason"] == "BackgroundTaskCrashed"]
    return events if len(events) >= count else None


async def test_a_crashed_status_writer_is_reported_restarted_and_writes_the_status_it_lost(
    cluster: Bench, caplog: pytest.LogCaptureFixture
) -> None:
    bench = cluster
    await bench.start_operator(status_refresh=3600)  # only the restarted writer can write the lost status
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _observed(bench, 1), what="the first status")
    # A proxy in front of the API server answers the next two status patches with HTML: the writer does not
    # expect it (json.JSONDecodeError) and crashes twice (the operator used to stop altogether on such a crash).
    bench.cluster.garbled[STATUS_PATCH] = 2
    with caplog.at_level(logging.ERROR, logger="llmroute.operator.main"):
        await bench.kube.apply_route("shop", "support", bench.spec(["chat", "chat-latest"]))

        async def crashed() -> str | None:
            text = await bench.metrics()
            return text if f"{CRASHES} 2.0" in text else None

        await bench.eventually(crashed, within=30, what="two crashes in /metrics")
        assert bench.cluster.garbled[STATUS_PATCH] == 0
        # Restarted after its back-offs (1 s, then 2 s), it writes the status whose write crashed (retried 5 s
        # later): every mark the change made was spent on the two crashed writes, and no refresh comes.
        await bench.eventually(lambda: _observed(bench, 2), within=30, what="the status after the restarts")
    events = await bench.eventually(lambda: _crash_events(bench, 2), what="the Events on the operator's Pod")
    assert [e["message"] for e in sorted(events, key=lambda e: e["metadata"]["name"])] == [
        f"background task 'status writer' crashed (JSONDecodeError, see the operator's log); it restarts in {s} s"
        for s in (1, 2)
    ]
    for event in events:
        assert event["type"] == "Warning"
        assert event["involvedObject"] == {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": OPERATOR_POD.name,
            "namespace": OPERATOR_POD.namespace,
            "uid": OPERATOR_POD.uid,
        }
    records = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert [r.getMessage() for r in records] == [
        f"background task 'status writer' crashed; restarting in {s:.1f} s" for s in (1, 2)
    ]
    assert all(r.exc_info is not None and "Expecting value" in str(r.exc_info[1]) for r in records)
    # The operator kept running throughout: the other loops were not touched and it is still ready.
    text = await bench.metrics()
    assert text.count("llmroute_background_task_crashes_total{") == 1
    assert "llmroute_leader 1.0" in text
    async with bench.kube.session.get(f"http://127.0.0.1:{bench.operator.admin_port}/readyz") as response:
        assert response.status == 200
