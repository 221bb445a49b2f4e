"""Markdown output: tables, and sections of docs/performance.md that each bench owns and rewrites."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table, numbers right-aligned."""
    align = ["---:" if rows and _numeric(rows[0][i]) else "---" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _numeric(cell: str) -> bool:
    return cell.lstrip("+-").replace(",", "").replace(".", "", 1).rstrip(" %msx").isdigit()


def pinning(pins: Sequence[tuple[str, str | None]]) -> str:
    """How the processes were pinned with taskset, for a bench's method section ("none" when unpinned)."""
    return ", ".join(f"{name} on CPU {cpus}" for name, cpus in pins if cpus) or "none"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def replace_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the `<!-- name:begin -->` and `<!-- name:end -->` markers of `path` (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        text = head + block + rest.partition(end)[2]
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block + "\n"
    path.write_text(text)
