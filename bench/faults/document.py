"""The faults section of docs/performance.md: scorecard, targets, what each arm did per fault, method, and
the raw records as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.common import machine, report
from bench.faults import score
from bench.faults.arms import BACKENDS, NAMES, RETRIES
from bench.faults.catalogue import BEST_SAFE, CATALOGUE, DEADLINE_S, TIMEOUT_S
from bench.faults.provider import CHUNK_DELAY_S
from bench.faults.run import Cell

API_TITLES = {
    "chat": "Chat completions (`POST /v1/chat/completions`)",
    "messages": "Anthropic Messages (`POST /v1/messages`)",
    "responses": "Responses (`POST /v1/responses`)",
}


def _arms(cells: list[Cell]) -> list[str]:
    return list(dict.fromkeys(c.arm for c in cells))


def _apis(cells: list[Cell]) -> list[str]:
    return list(dict.fromkeys(c.api for c in cells))


def _rows(cells: list[Cell]) -> list[list[Cell]]:
    keys = list(dict.fromkeys(c.row for c in cells))
    return [[c for c in cells if c.row == key] for key in keys]


def _arm_name(arm: str, api: str) -> str:
    return f"{BACKENDS[api].sdk}, direct" if arm == "direct" else NAMES[arm]


def scorecard(cells: list[Cell]) -> str:
    """One table per inbound API: rows = faults, columns = arms, each cell the score."""
    return "\n\n".join(
        f"**{API_TITLES[api]}**\n\n{_scorecard([c for c in cells if c.api == api])}" for api in _apis(cells)
    )


def _scorecard(cells: list[Cell]) -> str:
    rows = []
    for row in _rows(cells):
        rows.append(
            [
                row[0].fault.title,
                *(f"**{c.verdict.score}**" if c.verdict.score == "fail" else c.verdict.score for c in row),
            ]
        )
    totals = ["total (pass / partial / safe / fail)"]
    for arm in _arms(cells):
        mine = [c.verdict.score for c in cells if c.arm == arm]
        totals.append(" / ".join(str(mine.count(s)) for s in reversed(score.ORDER)))
    return report.table(["fault", *(_arm_name(a, cells[0].api) for a in _arms(cells))], [*rows, totals])


def targets(cells: list[Cell]) -> str:
    """The issue's targets for llmroute, met or missed, row by row (every API)."""
    ours = {c.row: c for c in cells if c.arm == "llmroute"}
    theirs = {c.row: c for c in cells if c.arm == "litellm"}
    if not ours:
        return "(llmroute did not run)"
    lines = []
    fails = [k for k, c in ours.items() if c.verdict.score == "fail"]
    lines.append(f"- No fail for llmroute: {'met' if not fails else '**missed**: ' + ', '.join(fails)}.")
    short = [c for c in ours.values() if c.verdict.score != ("safe" if c.fault.key in BEST_SAFE else "pass")]
    missed = "; ".join(f"{c.row} ({c.verdict.score}: {c.verdict.why})" for c in short)
    lines.append(
        "- Pass wherever a proxy can deliver the whole answer, safe where it cannot "
        f"({', '.join(sorted(BEST_SAFE))}): {'met' if not short else '**missed** on ' + missed}."
    )
    if theirs:
        behind = [k for k, c in ours.items() if k in theirs and _rank(c) < _rank(theirs[k])]
        level = [k for k, c in ours.items() if k in theirs and _rank(c) == _rank(theirs[k])]
        ahead = len(ours) - len(behind) - len(level)
        text = "met" if not behind else "**missed** on " + ", ".join(behind)
        lines.append(
            f"- Ahead of LiteLLM on every row: {text} (ahead on {ahead} rows, level on {len(level)}: "
            f"{', '.join(level) or 'none'}; level means both reached the same score)."
        )
    return "\n".join(lines)


def _rank(cell: Cell) -> int:
    return score.ORDER.index(cell.verdict.score)


def detail(cells: list[Cell]) -> str:
    """Per fault and arm: why the score, attempts on the primary and the fallback, when the app was done."""
    rows = []
    for cell in cells:
        primary, fallback = cell.attempts()
        done = max((s + r.seconds for s, r in zip(cell.sent, cell.received, strict=True)), default=0.0)
        seen = f"{primary} / {fallback}" if cell.fallback else f"{primary} / -"
        extras = [
            f"{n} {what}"
            for n, what in (
                (sum(s.probe for s in cell.primary.seen), "probes on the primary"),
                (sum(s.probe for s in cell.fallback.seen) if cell.fallback else 0, "probes on the fallback"),
                (sum(s.prefill for s in cell.fallback.seen) if cell.fallback else 0, "continuations"),
            )
            if n
        ]
        seen += f" ({', '.join(extras)})" if extras else ""
        note = f" (warm-up: {cell.warmup_failures} of {cell.fault.warmup} failed)" if cell.warmup_failures else ""
        counted = [r.attempts for r in cell.received if r.attempts is not None]
        attempts = ", ".join(map(str, counted)) if counted else "-"
        row = [cell.row, _arm_name(cell.arm, cell.api), cell.verdict.score, cell.verdict.why + note, seen, attempts]
        rows.append([*row, f"{done:.2f}"])
    headers = ["fault", "arm", "score", "why", "requests seen by primary / fallback", "attempts (proxy's log)"]
    headers.append("app done after s")
    return report.table(headers, rows)


def _catalogue() -> str:
    rows = []
    for fault in CATALOGUE:
        kind = "stream" if fault.stream else "JSON"
        sends = f"{fault.requests} x {kind}" + (f", {fault.interval:g} s apart" if fault.requests > 1 else "")
        right = f"the provider's {fault.expect_error} with its reason" if fault.expect_error else "the whole answer"
        if fault.key in BEST_SAFE:
            right += " (impossible: a clean error is the best)"
        rows.append([fault.key, fault.title, ", ".join(fault.apis), sends, right, str(fault.budget)])
    headers = ["key", "what the primary does once armed", "through", "the app sends", "right outcome"]
    headers.append("faulty answers allowed")
    return report.table(headers, rows)


def records(cells: list[Cell], meta: Mapping[str, object]) -> dict[str, Any]:
    """Everything measured, for bench/results/faults.json."""
    out = []
    for cell in cells:
        out.append(
            {
                "fault": cell.fault.key,
                "api": cell.api,
                "arm": cell.arm,
                "score": cell.verdict.score,
                "why": cell.verdict.why,
                "warmup_failures": cell.warmup_failures,
                "requests": [
                    {"sent": s, **{k: v for k, v in vars(r).items()}}
                    for s, r in zip(cell.sent, cell.received, strict=True)
                ],
                "primary_saw": [{**vars(s), "at": s.at - cell.start} for s in cell.primary.seen],
                "fallback_saw": [{**vars(s), "at": s.at - cell.start} for s in cell.fallback.seen]
                if cell.fallback
                else [],
            }
        )
    return {"meta": dict(meta), "cells": out}


def render(cells: list[Cell], meta: Mapping[str, object], configs: Mapping[str, str], image: str) -> str:
    config_blocks = "\n\n".join(
        f"<details><summary>{NAMES[arm]} configuration of the first fault's rows (as written; every other row's "
        "is the same with its own name and URLs, and no `capabilities` on prefill-rejected's fallback)</summary>"
        f"\n\n```yaml\n{text.strip()}\n```\n\n</details>"
        for arm, text in configs.items()
    )
    litellm = f" LiteLLM {meta['litellm']}." if meta.get("litellm") else ""
    return f"""## Provider faults (bench/faults)

What the app receives when its provider misbehaves, one fault at a time, through each inbound API (chat
completions, Anthropic Messages, Responses), for `llmroute sidecar`, LiteLLM's proxy, and the API's own SDK
(openai for chat completions and Responses, anthropic for Messages) calling the provider directly with its
built-in retries. Command:
`{meta["command"]}` ({meta["date"]}, commit {meta["commit"]}; machine load {meta["load_start"]} at the start,
{meta["load_end"]} at the end).{litellm}

{scorecard(cells)}

### Targets (issue 9)

{targets(cells)}

![timeline: what each provider saw and when the app was done, per fault and arm]({image})

In the timeline, a bar runs from when the app sent a request to when it had its outcome, coloured by that
request's grade; crosses are requests the faulty primary saw, dots requests the fallback saw.

### What happened, fault by fault

What the app got and what the providers saw, for every API, fault and arm:

<details><summary>{len(cells)} cells</summary>

{detail(cells)}

</details>

### Scores

{score.__doc__.split(chr(10), 2)[2].strip() if score.__doc__ else ""}

A stream counts as presented complete when the SDK's iterator ends without raising, which is how an app
that reads it to the end takes it. "Faulty answers allowed" is how many faulty answers the primary may give
before it counts as hammered: one per app request for a persistent fault (a router with a healthy fallback
has no reason to send it more), and Retry-After is honoured when no request reaches the primary before the
time it gave has passed, whoever sent it (for the direct SDK, the app's own next requests count: the SDK
cannot know). Probes are requests that set `max_tokens` (the app never does), such as llmroute's shadow
requests that measure a backend it has no recent answers from; continuations are requests that end with
the partial answer as an assistant prefill.

### The faults

{_catalogue()}

### Method

- One bench process runs every provider: a scripted server per primary and per fallback
  (`bench/faults/provider.py`, real sockets, HTTP/1.1 written by hand so a cut stream is a chunked body
  without its last chunk, a reset a TCP RST, silence a held socket). Each speaks the wire format of the API
  it is called in (`bench/faults/wire.py`): OpenAI chat chunks ending in `data: [DONE]`; Anthropic's named
  events from `message_start` to `message_stop`; Responses events numbered by `sequence_number` up to
  `response.completed`, after which the body ends. Errors come in each API's own shape and wording (for
  example Anthropic's `prompt is too long` and `Output blocked by content filtering policy`, Responses'
  `invalid_prompt`). Each fault gets fresh providers for each API and arm, so nothing one fault does to a
  router's state carries over to the next. Healthy providers answer one fixed 37-word text at once (JSON)
  or word by word every {CHUNK_DELAY_S * 1000:g} ms (stream, usage in the last events); a fallback
  continues an assistant prefill from where the text stopped (refusing, as Anthropic's API does, one that
  ends in whitespace), except where it rejects prefill with a 400.
- "Stream without its terminator" is, per API, the finish and usage sent and then the end-of-stream marker
  withheld with the connection held open: `data: [DONE]` (chat), `message_stop` (Messages), the end of
  the body after `response.completed` (Responses, which has no marker of its own).
- Before each fault, the app sends 12 healthy requests of the fault's kind at once through each arm (3 in
  the `stream-stall-young` row), so every router has seen the primary answer, as it would in production.
  Then the primary is armed and the app sends the fault's requests.
- The app is the API's official SDK: `openai.AsyncOpenAI` (`chat.completions.create`, `responses.create`)
  or `anthropic.AsyncAnthropic` (`messages.create`, `max_tokens` 1024), streaming by iterating the raw
  events to the end. In front of a proxy its own retries are off (the proxy's are measured); calling the
  provider directly it keeps the SDK's defaults (2 retries, Retry-After honoured) with
  `timeout={TIMEOUT_S:g}`. Every request is abandoned at the app's deadline, {DEADLINE_S:g} s.
- `llmroute sidecar`: one route per API and fault, `strategy: ordered`, the primary then the fallback
  (`capabilities: [prefill]` except in the prefill-rejected row), class timeout {TIMEOUT_S:g} s,
  `retry.attempts: {RETRIES}`, `outlierDetection.consecutiveFailures: 3`; the backends are `provider:
  openai` for chat, `provider: anthropic` for Messages, and `provider: openai, apis: [chat, responses]`
  for Responses (the providers serve both, as OpenAI's API and vLLM do), so each API's requests go to the
  providers in that API itself. The Responses API has no prefill, so a broken Responses stream can be
  continued only in chat: the fallback serves chat and declares `capabilities: [prefill]`.
- LiteLLM's proxy: per API and fault a model group on the primary and one on the fallback (`openai/...`
  for chat and Responses, `anthropic/...` for Messages) named in its `fallbacks` and
  `context_window_fallbacks`, `num_retries: {RETRIES}`, `timeout: {TIMEOUT_S:g}`, one worker. It serves
  `/v1/messages` and `/v1/responses` with the same router, fallbacks and retries as chat, so every row has
  a LiteLLM cell.
- The three arms of a fault and API run at the same time, the rows one after the other. The machine is
  shared and was busy (other engineers ran builds and tests on its 2 cores during the run; load averages above),
  so times in the detail table are indicative; the scores depend on what arrived, not on how fast,
  except where a deadline was missed.
- "attempts (proxy's log)": for llmroute, the `attempts` of its access-log line for each of the fault's
  requests (found by the `traceparent` the app sent with it), continuations included: its
  `x-llmroute-attempts` header goes out with a stream's first chunk, before any continuation. LiteLLM's
  proxy and the SDK report none (`-`).
- Raw records: `bench/results/faults.json` (not committed).

{config_blocks}

Machine: {", ".join(f"{k}: {v}" for k, v in machine.describe())}.
"""
