"""What the operator refuses: invalid updates, contested models, NACKs, with conditions, Events and the
last good table still serving."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Bench, StubSidecar


def _models(sidecar: StubSidecar) -> dict[str, list[str]]:
    return {name: json.loads(r.spec_json)["models"] for name, r in sidecar.table().items()}


async def _condition(bench: Bench, name: str, kind: str, **expected: Any) -> dict[str, Any] | None:
    """The route, once its `kind` condition has the expected fields."""
    route = await bench.kube.get_route("shop", name)
    cond = bench.condition(route, kind)
    return route if all(cond.get(k) == v for k, v in expected.items()) else None


async def test_invalid_update_is_refused_while_the_last_good_form_serves(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))
    await bench.eventually(lambda: _condition(bench, "support", "Programmed", status="True"), what="programmed")
    served_version = sidecar.version

    broken = bench.spec(["chat", "other"], fallback=["nowhere"])
    await bench.kube.apply_route("shop", "support", broken)
    route = await bench.eventually(
        lambda: _condition(bench, "support", "Accepted", status="False", observedGeneration=2), what="Accepted=False"
    )
    accepted = bench.condition(route, "Accepted")
    assert accepted["reason"] == "Invalid"
    assert "spec.fallback[0]: unknown backend 'nowhere'" in accepted["message"]
    assert route["status"]["observedGeneration"] == 2
    # The sidecar still runs generation 1, and is told so.
    assert sidecar.version == served_version
    assert _models(sidecar) == {"support": ["chat"]}
    assert sidecar.table()["support"].generation == 1
    programmed = bench.condition(route, "Programmed")
    assert "generation 1 (last good; generation 2 is not accepted)" in programmed["message"]

    events = await bench.eventually(lambda: bench.kube.events("shop"), what="a Warning Event")
    assert [(e["type"], e["reason"], e["involvedObject"]["name"]) for e in events] == [
        ("Warning", "Invalid", "support")
    ]
    assert "unknown backend 'nowhere'" in events[0]["message"]

    await bench.kube.apply_route("shop", "support", bench.spec(["chat", "other"]))
    await bench.eventually(lambda: _condition(bench, "support", "Accepted", status="True"), what="Accepted again")
    await bench.eventually(lambda: _has_models(sidecar, ["chat", "other"]), what="the fixed route at the sidecar")


async def _has_models(sidecar: StubSidecar, models: list[str]) -> bool:
    return _models(sidecar).get("support") == models


async def test_the_oldest_route_keeps_a_contested_model(bench: Bench) -> None:
    sidecar = await bench.sidecar("shop", "storefront-0")
    await bench.kube.apply_route("shop", "zeta", bench.spec(["chat"]))  # older, though it sorts last by name
    await bench.kube.apply_route("shop", "alpha", bench.spec(["chat", "embed"]))

    route = await bench.eventually(lambda: _condition(bench, "alpha", "Accepted", status="False"), what="alpha refused")
    accepted = bench.condition(route, "Accepted")
    assert accepted["reason"] == "ModelConflict"
    assert accepted["message"] == "spec.models[0]: model 'chat' is already served by LLMRoute shop/zeta"
    assert bench.condition(route, "Programmed")["reason"] == "Invalid"
    await bench.eventually(lambda: _condition(bench, "zeta", "Programmed", status="True"), what="zeta programmed")
    assert _models(sidecar) == {"zeta": ["chat"]}

    # Once zeta lets go of the model, alpha gets it without being touched.
    await bench.kube.apply_route("shop", "zeta", bench.spec(["chat-old"]))
    await bench.eventually(lambda: _condition(bench, "alpha", "Accepted", status="True"), what="alpha accepted")
    await bench.eventually(
        lambda: _same(_models(sidecar), {"zeta": ["chat-old"], "alpha": ["chat", "embed"]}), what="both served"
    )


async def _same(a: object, b: object) -> bool:
    return a == b


async def test_a_nacked_table_shows_as_rejected_by_proxy(bench: Bench) -> None:
    good = await bench.sidecar("shop", "storefront-0")
    picky = await bench.sidecar("shop", "storefront-1")
    picky.nack = "backend primary: provider 'openai' is not compiled into this sidecar"
    await bench.kube.apply_route("shop", "support", bench.spec(["chat"]))

    async def settled() -> dict[str, Any] | None:
        # The NACK and the other sidecar's ACK arrive in either order; the status converges on both.
        route = await _condition(bench, "support", "Programmed", reason="RejectedByProxy")
        counts = route and route["status"].get("sidecars")
        return route if counts == {"connected": 2, "programmed": 1, "rejected": 1} else None

    route = await bench.eventually(settled, what="RejectedByProxy with one sidecar programmed and one rejecting")
    programmed = bench.condition(route, "Programmed")
    assert programmed["status"] == "False"
    assert "storefront-1: backend primary: provider 'openai' is not compiled into this sidecar" in programmed["message"]
    assert "support" in good.table()
    assert len(picky.received) == 1  # a rejected version is not sent again
