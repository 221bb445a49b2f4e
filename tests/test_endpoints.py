"""--control-plane / --peers address lists: parsing, names resolved to every address, and the clients' ranking."""

from __future__ import annotations

import pytest

from llmroute.endpoints import Endpoint, ranked, resolve, split_addresses


def test_a_list_of_host_ports_parses_and_a_bad_entry_names_itself() -> None:
    assert split_addresses("a.svc:15010, 10.0.0.7:1,[::1]:5") == (("a.svc", 15010), ("10.0.0.7", 1), ("::1", 5))
    with pytest.raises(ValueError, match="'nope' is not HOST:PORT"):
        split_addresses("a:1,nope")
    with pytest.raises(ValueError, match="no address"):
        split_addresses(" , ")


async def test_a_name_stands_for_its_addresses_and_keeps_its_name_for_tls() -> None:
    endpoints = await resolve((("localhost", 15010), ("127.0.0.1", 15010), ("::1", 7)))
    assert Endpoint("127.0.0.1:15010", "localhost") in endpoints
    assert Endpoint("[::1]:7", "::1") in endpoints
    assert len(endpoints) == len(set(endpoints))


def test_clients_spread_evenly_and_only_a_gone_replicas_clients_move() -> None:
    a, b, c = (Endpoint(f"10.0.0.{i}:15010", "svc") for i in (1, 2, 3))
    pods = [f"app-{i}" for i in range(3000)]
    first = {pod: ranked([a, b, c], pod)[0] for pod in pods}
    shares = [sum(1 for e in first.values() if e == x) for x in (a, b, c)]
    assert all(800 < share < 1200 for share in shares), shares
    # c goes away: its clients spread over the others, everybody else stays where they were.
    after = {pod: ranked([a, b], pod)[0] for pod in pods}
    assert all(after[pod] == first[pod] for pod in pods if first[pod] != c)
    assert {after[pod] for pod in pods if first[pod] == c} == {a, b}
    # The order does not depend on the order the addresses were given or resolved in.
    assert all(ranked([c, b, a], pod) == ranked([a, b, c], pod) for pod in pods[:100])
