"""Supervised background loops: a crash is logged under the loop's name and the loop runs again."""

from __future__ import annotations

import asyncio
import logging

import pytest

from llmroute.supervise import Crash, Supervisor, log_failure, supervise

log = logging.getLogger("test.supervise")


async def test_a_crashing_loop_is_logged_counted_and_restarted_until_it_finishes(caplog) -> None:
    runs: list[int] = []
    crashes: list[str] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"crash {len(runs)}")

    with caplog.at_level(logging.ERROR, logger="test.supervise"):
        task = supervise("probes", loop, log, on_crash=crashes.append, first_restart=0.01)
        await asyncio.wait_for(task, 10)
    assert runs == [0, 1, 2]  # two crashes, then a run that finished on purpose: not restarted again
    assert crashes == ["probes", "probes"]
    assert task.get_name() == "probes"
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["background task 'probes' crashed; restarting in 0.0 s"] * 2
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["crash 1", "crash 2"]


async def test_cancelling_stops_a_supervised_loop() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = supervise("forever", forever, log)
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_one_shot_task_that_fails_is_logged_by_name(caplog) -> None:
    async def fails() -> None:
        raise ValueError("no")

    task = asyncio.get_running_loop().create_task(fails(), name="shadow probe r/gpt")
    task.add_done_callback(lambda t: log_failure(t, log))
    with caplog.at_level(logging.ERROR, logger="test.supervise"), pytest.raises(ValueError):
        await task
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert [r.getMessage() for r in caplog.records] == ["background task 'shadow probe r/gpt' failed"]


async def test_a_supervisor_reports_each_crash_with_its_error_and_stops_every_loop() -> None:
    crashes: list[Crash] = []
    started = asyncio.Event()

    async def crashes_once() -> None:
        if not crashes:
            raise KeyError("boom")
        started.set()
        await asyncio.sleep(3600)

    async def forever() -> None:
        await asyncio.sleep(3600)

    supervisor = Supervisor(log, on_crash=crashes.append, first_restart=0.01)
    pushes = supervisor.start("pushes", crashes_once)
    supervisor.start("refresh", forever)
    with pytest.raises(ValueError, match="'refresh' is already running"):
        supervisor.start("refresh", forever)
    await asyncio.wait_for(started.wait(), 10)  # it came back after its crash
    [crash] = crashes
    assert (crash.task, repr(crash.error), crash.restart_in) == ("pushes", "KeyError('boom')", 0.01)
    assert set(supervisor.tasks) == {"pushes", "refresh"}
    tasks = list(supervisor.tasks.values())
    await supervisor.stop()
    assert pushes.cancelled() and all(t.cancelled() for t in tasks)
    assert supervisor.tasks == {}


async def test_a_failing_crash_report_does_not_stop_the_restart(caplog) -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("crash")

    def report(crash: Crash) -> None:
        raise OSError("the metric backend is gone")

    with caplog.at_level(logging.ERROR, logger="test.supervise"):
        await asyncio.wait_for(Supervisor(log, on_crash=report, first_restart=0.01).start("l", loop), 10)
    assert runs == [1, 1]
    assert "reporting the crash of background task 'l' failed" in [r.getMessage() for r in caplog.records]
