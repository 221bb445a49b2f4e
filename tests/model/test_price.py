"""What a request costs: prompt tokens read from or written to a provider's cache have their own rates."""

from __future__ import annotations

import pytest

from llmroute.model import Price


def test_cache_reads_and_writes_are_priced_at_their_own_rates() -> None:
    price = Price(input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75)
    # 1000 prompt tokens: 600 read from the cache, 300 written to it, 100 plain; 200 completion tokens.
    assert price.cost(1000, 200, 600, 300) == pytest.approx((100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 200 * 15.0) / 1e6)


def test_rates_not_given_default_to_the_input_rate() -> None:
    price = Price(input_per_mtok=2.0, output_per_mtok=8.0)
    assert price.cost(1000, 100, 600, 300) == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)


def test_counts_beyond_the_prompt_are_capped() -> None:
    price = Price(input_per_mtok=1.0, cached_input_per_mtok=0.0, cache_write_per_mtok=10.0)
    assert price.cost(100, 0, 80, 80) == pytest.approx((80 * 0.0 + 20 * 10.0) / 1e6)
