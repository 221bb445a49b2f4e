"""bench/incident's drawn incidents: a seed always draws the same incident, the providers follow its phases,
and the oracle always names the fastest backend the schedule keeps healthy."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.incident import floor
from bench.incident.drawn import NAMES, Draw, draw
from bench.incident.seeds import arrival


def test_a_seed_draws_the_same_incident_every_time_and_seeds_differ(tmp_path: Path) -> None:
    assert draw(7) == draw(7)
    draws = [draw(seed) for seed in range(1, 9)]
    assert all(a != b for i, a in enumerate(draws) for b in draws[i + 1 :])
    draw(7).save(tmp_path / "draw.json")
    assert Draw.load(tmp_path / "draw.json") == draw(7)


@pytest.mark.parametrize("seed", range(1, 21))
def test_the_providers_and_the_oracle_follow_the_drawn_phases(seed: int) -> None:
    incident = draw(seed)
    phases = {p.name: p for p in incident.phases()}
    assert list(phases) == ["healthy", "degraded", "cascade", "recovered"]
    assert phases["recovered"].end == pytest.approx(incident.duration)
    assert incident.fails != incident.degrades
    schedules = incident.schedules(epoch=0.0)

    def behaviour(name: str, phase: str) -> tuple[float, float]:
        at = phases[phase].start + 0.01
        step = [b for start, b in schedules[name].phases if start <= at][-1]
        return step.latency.a, step.error_rate

    for name in NAMES:
        slow = name == incident.degrades
        failing = name == incident.fails
        assert behaviour(name, "healthy") == (incident.medians[name], 0.0)
        assert behaviour(name, "degraded") == (incident.slow if slow else incident.medians[name], 0.0)
        assert behaviour(name, "cascade")[1] == (incident.fail_rate if failing else 0.0)
        assert behaviour(name, "recovered") == (
            incident.medians[name],
            incident.fail_rate if failing and incident.fails_to_end else 0.0,
        )
    fastest = min(NAMES, key=lambda n: incident.medians[n])
    assert incident.oracle_choice(phases["healthy"].start + 0.01) == fastest
    for phase in ("degraded", "cascade", "recovered"):
        choice = incident.oracle_choice(phases[phase].start + 0.01)
        assert behaviour(choice, phase) == (incident.medians[choice], 0.0)  # healthy at that moment
        healthy = [n for n in NAMES if behaviour(n, phase) == (incident.medians[n], 0.0)]
        assert choice == min(healthy, key=lambda n: incident.medians[n])


def test_both_arms_send_the_same_keyed_requests_and_the_floor_follows_the_evidence() -> None:
    incident = draw(2)  # fast (487 ms) degrades to 5.8 s, then recovers; cheap is the oracle's meanwhile
    request = arrival(incident, 3, 17, 12.5)
    assert request == arrival(incident, 3, 17, 12.5)  # the same in both arms
    assert "[sim-draw 2:3:17]" in request.prompt
    assert arrival(incident, 3, 18, 12.5).prompt != request.prompt
    phases = {p.name: p for p in incident.phases()}
    schedules = incident.schedules(0.0)
    key = "2:3:17"

    def on(name: str, t: float) -> float:
        return floor.latency(schedules[name].at(t), key, False)

    # Right after the recovery no answer can have shown it yet: the evidence router still uses the oracle's
    # previous backend; one median of fast later, it uses fast as the oracle does.
    recovered = phases["recovered"].start
    assert floor.evidence_latency(incident, recovered + 0.01, key, False) == on("cheap", recovered + 0.01)
    assert floor.evidence_latency(incident, recovered + 0.6, key, False) == on("fast", recovered + 0.6)
    # Right after the degradation its requests are caught on fast and rescued after fast's healthy p95.
    degraded = phases["degraded"].start
    caught = floor.evidence_latency(incident, degraded + 0.01, key, False)
    assert caught == pytest.approx(0.487 * incident.jitter + on("mid", degraded + 0.01))
