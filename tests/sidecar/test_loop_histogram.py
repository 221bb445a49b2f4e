"""The GenAI metrics' lock-free histogram exposes exactly what prometheus_client's own would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from llmroute.sidecar.metrics import LoopHistogram


def test_a_loop_histogram_is_exposed_like_a_prometheus_client_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("op_seconds", "An operation.", ["kind"], (0.1, 1.0, 67108864), ours)
    reference = Histogram("op_seconds", "An operation.", ["kind"], buckets=(0.1, 1.0, 67108864), registry=theirs)
    for kind, value in [("a", 0.05), ("a", 0.1), ("a", 0.5), ("a", 1.0), ("a", 3.0), ("b", 1e9), ("b", 0.0)]:
        loop.labels(kind).observe(value)  # 0.1 and 1.0 fall on a bound: counted under it (le)
        reference.labels(kind).observe(value)

    def exposed(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]

    assert exposed(ours) == exposed(theirs)
    assert 'op_seconds_bucket{kind="a",le="0.1"} 2.0' in exposed(ours)
