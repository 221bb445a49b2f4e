"""The 21:00 incident, simulated on an injected clock through the composed policies (eligible -> rank
latency -> shadow probes): the primary degrades from 300 ms to 8.5 s and later recovers."""

import heapq
import random
from collections.abc import Callable

from llmroute.sidecar.balancer import Candidate, OutlierDetector, PickContext, ShadowProber, eligible, rank

DEGRADE_AT, RECOVER_AT, END = 20.0, 60.0, 120.0
ARRIVAL_EVERY = 0.05  # 20 requests/s


def simulate(make: Callable[..., Candidate]) -> tuple[list[tuple[float, str]], int]:
    """Returns each user request's (time, backend) and the number of shadow probes sent."""
    primary, secondary = make("primary"), make("secondary")

    def latency(c: Candidate, t: float) -> float:
        if c is secondary:
            return 0.8
        return 8.5 if DEGRADE_AT <= t < RECOVER_AT else 0.3

    detector, prober, rng = OutlierDetector(["primary", "secondary"]), ShadowProber(), random.Random(3)
    completions: list[tuple[float, int, Candidate, int, bool]] = []
    sent: list[tuple[float, str]] = []
    probes = seq = 0
    for tick in range(int(END / ARRIVAL_EVERY)):
        now = tick * ARRIVAL_EVERY
        while completions and completions[0][0] <= now:
            end, _, c, token, is_probe = heapq.heappop(completions)
            c.stats.finish(token, end)
            if is_probe:
                prober.done(c.name)
        ranked = rank("latency", eligible([primary, secondary], detector), PickContext(now=now, rng=rng))
        shadows = prober.due(ranked, now)
        probes += len(shadows)
        for c, is_probe in [(ranked[0], False), *((s, True) for s in shadows)]:
            seq += 1
            heapq.heappush(completions, (now + latency(c, now), seq, c, c.stats.start(now, shadow=is_probe), is_probe))
        sent.append((now, ranked[0].name))
    return sent, probes


def share(sent: list[tuple[float, str]], start: float, end: float) -> float:
    window = [name for t, name in sent if start <= t < end]
    return window.count("primary") / len(window)


def test_traffic_leaves_a_degraded_backend_at_once_and_returns_after_it_recovers(
    make: Callable[..., Candidate],
) -> None:
    sent, probes = simulate(make)
    assert share(sent, 1.0, DEGRADE_AT) == 1.0
    # Users stop being sent to it as soon as its oldest request outlives the alternative (~0.9 s) ...
    slow_path = [t for t, name in sent if name == "primary" and DEGRADE_AT <= t < RECOVER_AT]
    assert max(slow_path) < DEGRADE_AT + 1.0
    # ... and none is sent back while it stays slow, though shadow probes keep measuring it.
    assert share(sent, DEGRADE_AT + 1.0, RECOVER_AT) == 0.0
    # Once it recovers, a few fast probe answers in a row, sent one right after the other, prove it and it
    # wins its traffic back within seconds; the slow probes sent just before the recovery, still taking
    # their 8.5 s, neither delay that nor take the traffic away again when they end.
    # Within a second of the recovery a probe is out (one a second while the slow ones run), and its answer
    # and two more prove it: 1.25 s here (2.25 s when a slow probe held back the next for 2 s).
    back = min(t for t, name in sent if name == "primary" and t >= RECOVER_AT)
    assert back < RECOVER_AT + 2.0, back
    assert share(sent, back + 1.0, END) == 1.0
    # Exploration costs at most one probe per backend per second, far fewer in practice.
    assert probes < 0.05 * len(sent)
