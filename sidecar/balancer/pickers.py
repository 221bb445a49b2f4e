"""The five strategies. Each ranks the eligible candidates for one request, primary first and the rest in
the order to try next (hedge, failover); `with_fallback` then puts the route's explicit fallback order
right after the primary."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from llmroute.model.spec import Weights

from .candidates import Candidate

NEAR_TIE = 0.10
"""Latency strategy: candidates within 10% of the best estimate are equally good; the primary is drawn
at random among them so traffic does not herd onto whichever is a hair faster."""
SCORE_TIE = 0.02
"""Score strategy: scores (0..1) within this of the best count as ties, for the same reason."""


@dataclass(slots=True)
class PickContext:
    """What a ranking needs to know about the request. Token counts only price it (cost, score): the
    request path estimates input from the prompt and output from max_tokens."""

    now: float
    rng: random.Random
    deadline: float | None = None
    """Seconds the attempt may take (the cost strategy keeps to candidates expected to meet it)."""
    stream: bool = False
    """Rank by time to first token instead of total latency."""
    input_tokens: int = 1000
    output_tokens: int = 300
    weights: Weights = field(default_factory=Weights)
    """The route's weights for the score strategy."""


def rank(strategy: str, candidates: Sequence[Candidate], ctx: PickContext) -> list[Candidate]:
    """Candidates ordered by `strategy` (the route's, or the priority's override): latency, score, cost,
    ordered or weighted."""
    if not candidates:
        return []
    match strategy:
        case "latency":
            return rank_latency(candidates, ctx)
        case "score":
            return rank_score(candidates, ctx)
        case "cost":
            return rank_cost(candidates, ctx)
        case "ordered":
            return list(candidates)
        case "weighted":
            return rank_weighted(candidates, ctx)
        case _:
            raise ValueError(f"unknown strategy {strategy!r}")


def rank_latency(candidates: Sequence[Candidate], ctx: PickContext) -> list[Candidate]:
    """Lowest expected latency first; near-ties (within `NEAR_TIE`) broken at random. Not
    power-of-two-choices: provider APIs are not replicas, so the second-best is really slower."""
    latencies = _latencies(candidates, ctx)
    return _ranked(candidates, latencies, ctx.rng, min(latencies) * NEAR_TIE)


def rank_score(candidates: Sequence[Candidate], ctx: PickContext) -> list[Candidate]:
    """Lowest weighted shortfall first. Each criterion is scored by how far a candidate falls short of the
    best one, relative to it (0 = best, toward 1 = far worse), so units do not matter and 300 vs 310 ms
    stays a small difference; latency is live, cost is for this request's tokens."""
    w = ctx.weights
    total = (w.latency + w.cost + w.quality) or 1.0
    latency = _shortfall(_latencies(candidates, ctx))
    cost = _shortfall([expected_cost(c, ctx) for c in candidates])
    best_quality = max(c.spec.quality for c in candidates)
    scores = [
        (
            w.latency * latency[i]
            + w.cost * cost[i]
            + w.quality * (1.0 - c.spec.quality / best_quality if best_quality > 0 else 0.0)
        )
        / total
        for i, c in enumerate(candidates)
    ]
    return _ranked(candidates, scores, ctx.rng, SCORE_TIE)


def rank_cost(candidates: Sequence[Candidate], ctx: PickContext) -> list[Candidate]:
    """Cheapest first among those expected to meet the deadline, then the rest fastest first (so with no
    candidate fast enough, the primary is the fastest)."""
    latencies = _latencies(candidates, ctx)
    deadline = ctx.deadline

    def key(i: int) -> tuple[bool, float, float]:
        cost = expected_cost(candidates[i], ctx)
        if deadline is None or latencies[i] <= deadline:
            return (False, cost, latencies[i])
        return (True, latencies[i], cost)

    return [candidates[i] for i in sorted(range(len(candidates)), key=key)]


def rank_weighted(candidates: Sequence[Candidate], ctx: PickContext) -> list[Candidate]:
    """A weighted random order: each candidate is primary with probability weight / total weight, and so
    on down the list (a race of exponential clocks with rate = weight). Weight 0 goes last."""
    keys = [ctx.rng.expovariate(c.spec.weight) if c.spec.weight > 0 else float("inf") for c in candidates]
    return [candidates[i] for i in sorted(range(len(candidates)), key=keys.__getitem__)]


def with_fallback(
    ranked: Sequence[Candidate], fallback: Sequence[str], late: Sequence[Candidate] = ()
) -> list[Candidate]:
    """The primary, then the route's `fallback` names in their order (those among the candidates), then
    the remaining candidates in rank order; then `late` (ranked: expected to miss the deadline, or stalled)
    the same way, the primary among them when `ranked` is empty. The fallback order says which backend that
    can answer in time is tried next: it never puts one known to take 8.8 s for a 3 s deadline before them."""
    if not ranked:
        ranked, late = late, ()
    if not ranked:
        return []
    return [ranked[0], *_fallback_first(ranked[1:], fallback), *_fallback_first(late, fallback)]


def _fallback_first(candidates: Sequence[Candidate], fallback: Sequence[str]) -> list[Candidate]:
    """`candidates` with those named in `fallback` first, in its order, the others after them in their order."""
    rest = {c.name: c for c in candidates}
    head = [rest.pop(name) for name in fallback if name in rest]
    return [*head, *rest.values()]


def expected_cost(candidate: Candidate, ctx: PickContext) -> float:
    """USD this request would cost on the candidate, from the estimated token counts."""
    price = candidate.spec.price
    return (ctx.input_tokens * price.input_per_mtok + ctx.output_tokens * price.output_per_mtok) / 1e6


def _latencies(candidates: Sequence[Candidate], ctx: PickContext) -> list[float]:
    return [c.expected_latency(ctx.now, stream=ctx.stream) for c in candidates]


def _shortfall(values: list[float]) -> list[float]:
    """1 - best/value per value (lower is better): 0 for the best, toward 1 for much worse, 1 for inf."""
    best = min(values)
    return [0.0 if v <= best else 1.0 - best / v for v in values]


def _ranked(
    candidates: Sequence[Candidate], keys: list[float], rng: random.Random, tolerance: float
) -> list[Candidate]:
    """Candidates by ascending key, the primary drawn uniformly among those within `tolerance` of the best."""
    order = sorted(range(len(candidates)), key=keys.__getitem__)
    limit = keys[order[0]] + tolerance
    ties = 1
    while ties < len(order) and keys[order[ties]] <= limit:
        ties += 1
    if ties > 1:
        order.insert(0, order.pop(rng.randrange(ties)))
    return [candidates[i] for i in order]
