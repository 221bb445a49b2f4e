"""matplotlib for the benches' PNG charts, headless (a bench dependency: `.venv/bin/pip install matplotlib`)."""

from __future__ import annotations

from types import ModuleType


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend, or exit naming what to install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("matplotlib is missing: .venv/bin/pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
