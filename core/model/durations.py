"""Kubernetes-style duration strings (`500ms`, `2s`, `1m30s`), as Go's time.ParseDuration reads them."""

from __future__ import annotations

import re

# Units Go accepts, in seconds. The CRD schema uses DURATION_PATTERN so the API server rejects
# what this module would reject.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ValueError with the accepted form on anything else."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"invalid duration {text!r}: expected a number with a unit, such as 500ms, 2s or 1m30s")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """Render seconds the short way a person would write them (`500ms`, `2s`, `1m30s`)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    if whole != seconds:
        return f"{round(seconds * 1000)}ms"
    minutes, secs = divmod(whole, 60)
    if minutes == 0:
        return f"{secs}s"
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"
