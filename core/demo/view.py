"""The live view while the demo runs: a panel redrawn in place on a terminal (plain ANSI escapes), or a
compact progress line every few seconds when stdout is a pipe or a CI log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TextIO

from llmroute.demo.observe import SidecarView
from llmroute.demo.scenario import Phase
from llmroute.demo.summary import table
from llmroute.demo.traffic import Result

WINDOW_S = 3.0
"""Traffic share and success in the view cover the requests started in the last few seconds."""


def _recent(results: Sequence[Result], elapsed: float) -> list[Result]:
    """Requests started in the last WINDOW_S seconds that have finished (results arrive in finish order)."""
    recent = []
    for result in reversed(results):
        if result.started >= elapsed - WINDOW_S:
            recent.append(result)
        elif result.started < elapsed - 4 * WINDOW_S:
            break  # finish order is near start order: nothing recent before this
    return recent


def _share(recent: Sequence[Result]) -> Counter[str]:
    return Counter(r.backend for r in recent if r.ok and r.backend)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f} ms"


class LiveView:
    """Draws the state of the run to `out`; `tty` picks the in-place panel over progress lines."""

    def __init__(self, out: TextIO, *, tty: bool, line_every: float = 3.0) -> None:
        self._out = out
        self._tty = tty
        self._line_every = line_every
        self._drawn_lines = 0
        self._last_line = -line_every

    @property
    def interval(self) -> float:
        """How often `update` is worth calling."""
        return 0.5 if self._tty else self._line_every

    def update(
        self, elapsed: float, duration: float, phase: Phase, sidecar: SidecarView, results: Sequence[Result]
    ) -> None:
        recent = _recent(results, elapsed)
        if self._tty:
            self._redraw(self._panel(elapsed, duration, phase, sidecar, recent, len(results)))
        else:
            self._line(elapsed, phase, sidecar, recent, len(results))

    def close(self) -> None:
        """Leave the last panel on screen and start a fresh line for what follows."""
        self._drawn_lines = 0
        self._out.flush()

    def _panel(
        self, elapsed: float, duration: float, phase: Phase, sidecar: SidecarView, recent: list[Result], done: int
    ) -> str:
        share = _share(recent)
        answered = sum(share.values()) or 1
        rows = [["backend", "share", "p50", "p95", "in flight", "failed calls", "state"]]
        for b in sidecar.backends:
            state = b.state if b.state == "active" else f"\x1b[31m{b.state}\x1b[0m"
            rows.append(
                [
                    b.name,
                    f"{100 * share[b.name] / answered:.0f}%",
                    _s(b.p50),
                    _s(b.p95),
                    str(b.in_flight),
                    f"{sidecar.failed_attempts.get(b.name, 0):.0f}",
                    state,
                ]
            )
        ok = sum(r.ok for r in recent)
        success = f"{100 * ok / len(recent):.1f}%" if recent else "-"
        bar_width = 30
        filled = round(bar_width * min(elapsed / duration, 1.0))
        lines = [
            f"\x1b[1mllmroute demo\x1b[0m  [{'#' * filled}{'.' * (bar_width - filled)}] "
            f"{elapsed:5.1f}/{duration:.0f} s   phase \x1b[1m{phase.name}\x1b[0m",
            f"  {phase.story}",
            "",
            table(rows),
            "",
            f"last {WINDOW_S:.0f} s: {len(recent)} requests, success {success}    total done: {done}",
            f"router: failovers {sidecar.failovers:.0f}  hedges {sidecar.hedges_sent:.0f} sent / "
            f"{sidecar.hedges_won:.0f} won  retries {sidecar.retries:.0f}  ejections {sidecar.ejections:.0f}",
        ]
        return "\n".join(lines)

    def _redraw(self, panel: str) -> None:
        up = f"\x1b[{self._drawn_lines}F" if self._drawn_lines else ""
        self._out.write(up + "\x1b[J" + panel + "\n")
        self._out.flush()
        self._drawn_lines = panel.count("\n") + 1

    def _line(self, elapsed: float, phase: Phase, sidecar: SidecarView, recent: list[Result], done: int) -> None:
        if elapsed - self._last_line < 0.9 * self._line_every:  # a wake-up a little early still gets its line
            return
        self._last_line = elapsed
        share = _share(recent)
        answered = sum(share.values()) or 1
        shares = " ".join(f"{b.name} {100 * share[b.name] / answered:.0f}%" for b in sidecar.backends)
        ejected = ",".join(b.name for b in sidecar.backends if b.state != "active") or "none"
        ok = sum(r.ok for r in recent)
        success = f"{100 * ok / len(recent):.0f}%" if recent else "-"
        self._out.write(
            f"[{elapsed:5.1f}s {phase.name:<8}] done {done:5d}  ok {success:>4}  share {shares}  "
            f"ejected {ejected}  failovers {sidecar.failovers:.0f} hedges {sidecar.hedges_sent:.0f} "
            f"retries {sidecar.retries:.0f}\n"
        )
        self._out.flush()
