"""Shared builders for the balancer tests: candidates from real model specs, with fresh stats."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from llmroute.model.spec import Backend, Price
from llmroute.sidecar.balancer import BackendStats, Candidate


def candidate(name: str, *, price: float | Price = 1.0, **spec: Any) -> Candidate:
    """A candidate named `name`, priced `price` USD/MTok in and out unless given a Price."""
    if not isinstance(price, Price):
        price = Price(input_per_mtok=price, output_per_mtok=price)
    backend = Backend(name=name, provider="openai", url=f"http://{name}.test/v1", model="m", price=price, **spec)
    return Candidate(backend, BackendStats())


@pytest.fixture
def make() -> Callable[..., Candidate]:
    return candidate


def observe(c: Candidate, latency: float, now: float, times: int = 1) -> float:
    """Feed `times` successful requests of `latency` s ending at `now`, one every 100 ms; returns the end."""
    for _ in range(times):
        token = c.stats.start(now - latency)
        c.stats.finish(token, now)
        now += 0.1
    return now


@pytest.fixture(name="observe")
def observe_fixture() -> Callable[..., float]:
    return observe
