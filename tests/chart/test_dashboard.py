"""The Grafana dashboard only charts series the sidecar and operator really export."""

from __future__ import annotations

import json
import re

from tests.chart.conftest import CHART
from tests.tools import REPO

DASHBOARD = json.loads((CHART / "dashboards" / "llmroute.json").read_text())


def _base(name: str) -> str:
    """The metric family: prometheus_client appends _total to counters and _bucket/_count/_sum to histograms."""
    return re.sub(r"_(bucket|count|sum|total)$", "", name)


def dashboard_series() -> set[str]:
    """Metric families the dashboard queries."""
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    names = {name for expr in exprs for name in re.findall(r"\b(?:llmroute|gen_ai_client)_[a-z0-9_]+", expr)}
    return {_base(name) for name in names}


def exported_series() -> set[str]:
    """Metric families named in the sidecar's and operator's code."""
    sources = [*(REPO / "sidecar").rglob("*.py"), *(REPO / "operator").rglob("*.py")]
    pattern = r'"((?:llmroute|gen_ai_client)_[a-z0-9_]+)"'
    return {_base(name) for path in sources for name in re.findall(pattern, path.read_text())}


def test_every_charted_series_is_exported() -> None:
    assert dashboard_series() - exported_series() == set()


def test_dashboard_covers_sidecar_and_control_plane() -> None:
    expected = {
        _base(name)
        for name in (
            "llmroute_request_duration_seconds",
            "llmroute_time_to_first_token_seconds",
            "llmroute_tokens_total",
            "llmroute_cost_usd_total",
            "llmroute_fallbacks_total",
            "llmroute_retries_total",
            "llmroute_hedges_total",
            "llmroute_ejections_total",
            "llmroute_requests_in_flight",
            "llmroute_config_convergence_seconds",
            "llmroute_connected_sidecars",
            "llmroute_pushes_total",
            "llmroute_nacks_total",
            "llmroute_reconcile_errors_total",
            "gen_ai_client_operation_duration_seconds",
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "gen_ai_client_token_usage",
        )
    }
    assert expected <= dashboard_series()
