"""One fault through one inbound API for one arm: warm the route up on a healthy primary, arm the fault, send
the app's requests, and score what the app received and what the providers saw."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass, field

from bench.faults import app
from bench.faults.arms import BACKENDS, RETRIES, route_name
from bench.faults.catalogue import DEADLINE_S, TIMEOUT_S, Fault
from bench.faults.provider import ANSWER, FaultProvider
from bench.faults.score import Received, Verdict, score_row
from bench.faults.wire import count_usage


@dataclass
class Cell:
    """One fault through one inbound API against one arm: its providers (no fallback for the direct SDK) and
    what happened."""

    fault: Fault
    api: str
    arm: str
    primary: FaultProvider
    fallback: FaultProvider | None
    base_url: str = ""
    sent: list[float] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    warmup_failures: int = 0
    verdict: Verdict = field(default_factory=lambda: Verdict("fail", "not run"))
    start: float = 0.0

    def client(self) -> app.Client:
        """The app's SDK client: its own retries and timeout when calling the provider directly; none in
        front of a proxy, whose retries are the ones measured (the app's deadline still applies)."""
        if self.arm == "direct":
            return app.client(self.api, self.primary.root, timeout=TIMEOUT_S, retries=RETRIES)
        return app.client(self.api, self.base_url, timeout=DEADLINE_S + 5, retries=0)

    @property
    def model(self) -> str:
        return BACKENDS[self.api].primary if self.arm == "direct" else route_name(self.api, self.fault)

    @property
    def row(self) -> str:
        """The scorecard row: inbound API and fault."""
        return f"{self.api}: {self.fault.key}"

    def attempts(self) -> tuple[int, int]:
        """Requests the primary and the fallback saw after the fault was armed."""
        return len(self.primary.seen), len(self.fallback.seen) if self.fallback else 0


async def run(cell: Cell) -> None:
    """Run the cell and set its verdict."""
    fault, api = cell.fault, cell.api
    async with cell.client() as client:
        warm = await asyncio.gather(*(app.ask(api, client, cell.model, fault.stream) for _ in range(fault.warmup)))
        cell.warmup_failures = sum(got.text != ANSWER or bool(got.error) for got in warm)
        cell.start = time.monotonic()
        cell.primary.arm(cell.start)
        if cell.fallback is not None:
            cell.fallback.arm(cell.start)

        async def one(i: int) -> tuple[float, Received]:
            await asyncio.sleep(max(0.0, cell.start + i * fault.interval - time.monotonic()))
            return time.monotonic() - cell.start, await app.ask(api, client, cell.model, fault.stream)

        for sent, received in await asyncio.gather(*(one(i) for i in range(fault.requests))):
            cell.sent.append(sent)
            cell.received.append(received)
    answered_by = None
    if fault.accounting:
        answered = cell.fallback is not None and any(s.kind == "ok" for s in cell.fallback.seen)
        backends = BACKENDS[api]
        answered_by = (backends.fallback if answered else backends.primary, count_usage(app.QUESTION, ANSWER))
    reason = fault.reason(api)
    cell.verdict = score_row(cell.received, cell.primary.seen, fault.budget, fault.expect_error, reason, answered_by)


async def run_row(cells: list[Cell]) -> None:
    """The arms of one fault and API at the same time (each on its own providers)."""
    await asyncio.gather(*(run(c) for c in cells))


def attempts_by_trace(log: str) -> dict[str, int]:
    """Backend attempts per trace id, from llmroute's access log (one JSON line per request on its stdout,
    among its other log lines): the count it made for the request, continuations included."""
    found: dict[str, int] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        trace, attempts = entry.get("trace_id"), entry.get("attempts")
        if isinstance(trace, str) and isinstance(attempts, int):
            found[trace] = attempts
    return found


def attach_attempts(cells: list[Cell], attempts: dict[str, int]) -> None:
    """Give each of these cells' requests the attempts the proxy's log reports for it."""
    for cell in cells:
        cell.received = [dataclasses.replace(r, attempts=attempts.get(r.trace_id)) for r in cell.received]
