"""Warm-aware routing: warm endpoints first within a priority (precomputed in the table), `cold-start` in the
reason when a request must wait for a load, and the optional cross-priority preference for slow loads."""

from __future__ import annotations

import random

from services.router.routing import Decision, RouteRequest, select
from services.router.table import RoutingTable, build_table
from shared.config import Balancer, RoutingStrategy
from shared.state import EndpointState, WarmPhase, WarmState
from tests.router.core_builders import NOW, config, endpoint, state, states

SMOL = "ai/smollm2:latest"
PHI = "ai/phi3:latest"


def ps_known(s: EndpointState) -> EndpointState:
    """The endpoint answered /engines/ps (possibly with nothing loaded)."""
    return s.model_copy(update={"loaded_known": True})


def decide(
    table: RoutingTable, model: str = SMOL, *, inflight: dict[str, int] | None = None, rotation: int = 0
) -> Decision:
    return select(
        table,
        RouteRequest(model),
        balancer=Balancer.ROUND_ROBIN,
        strategy=RoutingStrategy.STRICT,
        inflight=inflight or {},
        blocked=frozenset(),
        rotation=rotation,
        rng=random.Random(3),
    )


def names(decision: Decision) -> list[str]:
    return [c.target.name for c in decision.candidates]


CFG = config(
    endpoint("a", 100, max_concurrent_requests=1),
    endpoint("b", 100),
    endpoint("c", 50),
    balancer="round-robin",
)


def fleet(*, a_loaded: bool, b_loaded: bool, c_loaded: bool = False) -> dict[str, EndpointState]:
    return states(
        ps_known(state("a", models=(SMOL, PHI), loaded=(SMOL,) if a_loaded else ())),
        ps_known(state("b", models=(SMOL, PHI), loaded=(SMOL,) if b_loaded else ())),
        ps_known(state("c", models=(SMOL,), loaded=(SMOL,) if c_loaded else ())),
    )


def test_the_warm_endpoint_of_a_tier_goes_first_whatever_the_rotation() -> None:
    table = build_table(CFG, fleet(a_loaded=False, b_loaded=True), now=NOW)
    route = table.routes[SMOL]
    assert [(t.priority, t.cold, [m.name for m in t.targets]) for t in route.known] == [
        (100, False, ["b"]),
        (100, True, ["a"]),
        (50, True, ["c"]),
    ]
    for rotation in range(4):
        decision = decide(table, rotation=rotation)
        assert names(decision)[0] == "b"
        assert "cold-start" not in decision.reason


def test_cold_start_is_marked_when_no_warm_endpoint_of_the_tier_has_room() -> None:
    table = build_table(CFG, fleet(a_loaded=True, b_loaded=False), now=NOW)
    assert names(decide(table))[0] == "a"
    busy = decide(table, inflight={"a": 1})  # `a` (the warm one) is at its limit of 1
    assert names(busy) == ["b", "c", "a"]
    assert busy.reason.endswith(";cold-start")
    nothing_warm = decide(build_table(CFG, fleet(a_loaded=False, b_loaded=False), now=NOW))
    assert "cold-start" in nothing_warm.reason


def test_unknown_loaded_state_is_not_called_cold() -> None:
    # An OpenAI-compatible server says nothing about what it has loaded: neither warm-first nor cold-start.
    sts = states(state("a", models=(SMOL,)), state("b", models=(SMOL,)))
    decision = decide(build_table(config(endpoint("a", 100), endpoint("b", 100)), sts, now=NOW))
    assert "cold-start" not in decision.reason


def test_priority_still_wins_over_warmth_by_default() -> None:
    table = build_table(CFG, fleet(a_loaded=False, b_loaded=False, c_loaded=True), now=NOW)
    decision = decide(table)
    assert names(decision)[:2] in (["a", "b"], ["b", "a"])
    assert "cold-start" in decision.reason


def warm_state(endpoint: str, load_time_s: float) -> WarmState:
    return WarmState(endpoint=endpoint, model=SMOL, phase=WarmPhase.WARM, load_time_s=load_time_s)


def test_a_slow_load_prefers_a_warm_lower_tier_when_asked() -> None:
    sts = fleet(a_loaded=False, b_loaded=False, c_loaded=True)
    slow = {("c", SMOL): warm_state("c", 30.0)}
    across = build_table(CFG, sts, now=NOW, warm=slow, warm_across_tiers_s=10.0)
    decision = decide(across)
    assert names(decision)[0] == "c"
    assert "cold-start" not in decision.reason
    # A fast load is not worth leaving the priority for; nor is it without the setting.
    fast = build_table(CFG, sts, now=NOW, warm={("c", SMOL): warm_state("c", 2.0)}, warm_across_tiers_s=10.0)
    assert names(decide(fast))[0] != "c"
    off = build_table(CFG, sts, now=NOW, warm=slow)
    assert names(decide(off))[0] != "c"
    # PHI was never measured: its routes are unchanged.
    assert [t.priority for t in across.routes[PHI].known] == [100]


def test_an_alias_is_warm_where_its_real_model_is_loaded() -> None:
    cfg = config(endpoint("a", 100), endpoint("b", 100), aliases={"fast": ["smollm2"]}, balancer="round-robin")
    sts = states(ps_known(state("a", models=(SMOL,))), ps_known(state("b", models=(SMOL,), loaded=(SMOL,))))
    table = build_table(cfg, sts, now=NOW)
    for rotation in range(3):
        decision = decide(table, "fast", rotation=rotation)
        assert names(decision)[0] == "b"
        assert "cold-start" not in decision.reason
