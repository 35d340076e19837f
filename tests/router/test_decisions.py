"""`Decision.stable` (select says when its answer did not depend on rotation, randomness or load) and the
`Decisions` memo in front of `select` (it must always answer what `select` would)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from services.router.circuit import Circuits
from services.router.decisions import Decisions
from services.router.routing import Decision, RouteRequest, select
from services.router.runtime import Runtime
from services.router.table import RoutingTable, build_table
from shared.config import PierConfig
from shared.state import EndpointStatus
from tests.router.core_builders import NOW, config, endpoint, state, states

SMOL = "ai/smollm2:latest"


def _two_tiers(**extra: Any) -> tuple[PierConfig, RoutingTable]:
    cfg = config(endpoint("a", 100, **extra), endpoint("b", 50), balancer="round-robin")
    table = build_table(cfg, states(state("a", models=(SMOL,)), state("b", models=(SMOL,))), now=NOW, version=1)
    return cfg, table


def _select(
    cfg: PierConfig, table: RoutingTable, inflight: Mapping[str, int], blocked: frozenset[str], rotation: int = 0
) -> Decision:
    return select(
        table,
        RouteRequest("smollm2"),
        balancer=cfg.load_balancer,
        strategy=cfg.routing_strategy,
        inflight=inflight,
        blocked=blocked,
        rotation=rotation,
        rng=random.Random(0),
    )


def _fresh_select(cfg: PierConfig, table: RoutingTable, runtime: Runtime, blocked: frozenset[str]) -> list[str]:
    return [c.target.name for c in _select(cfg, table, runtime.inflight, blocked).candidates]


def test_one_target_per_tier_nothing_blocked_all_with_room_is_stable() -> None:
    cfg, table = _two_tiers()
    decision = _select(cfg, table, {}, frozenset(), rotation=3)
    assert decision.stable
    assert [c.target.name for c in decision.candidates] == ["a", "b"]


def test_a_balancer_choice_a_block_or_a_full_target_is_not_stable() -> None:
    cfg = config(endpoint("a", 100), endpoint("b", 100), balancer="round-robin")
    table = build_table(cfg, states(state("a", models=(SMOL,)), state("b", models=(SMOL,))), now=NOW)
    assert not _select(cfg, table, {}, frozenset()).stable  # the rotation chose the order

    cfg2, table2 = _two_tiers(max_concurrent_requests=1)
    assert not _select(cfg2, table2, {}, frozenset({"a"})).stable
    full = _select(cfg2, table2, {"a": 1}, frozenset())
    assert [c.target.name for c in full.candidates] == ["b", "a"]
    assert not full.stable


def test_memo_reuses_a_stable_decision_and_follows_select_when_things_change() -> None:
    cfg, table = _two_tiers(max_concurrent_requests=1)
    runtime = Runtime(seed=0)
    circuits = Circuits(threshold=1, open_s=60.0)
    decisions = Decisions(cfg, runtime, circuits)

    first = decisions.decide(table, "smollm2", None, False)
    assert decisions.decide(table, "smollm2", None, False) is first  # reused, not rebuilt
    assert [c.target.name for c in first.candidates] == _fresh_select(cfg, table, runtime, frozenset())

    # "a" at its limit: the memo must not answer with "a" first.
    runtime.acquire("a")
    busy = decisions.decide(table, "smollm2", None, False)
    assert [c.target.name for c in busy.candidates] == _fresh_select(cfg, table, runtime, frozenset()) == ["b", "a"]
    runtime.release("a")
    assert decisions.decide(table, "smollm2", None, False) is first

    # A circuit opens: select decides, with "a" left out.
    circuits.failure("a", "test")
    opened = decisions.decide(table, "smollm2", None, False)
    assert [c.target.name for c in opened.candidates] == _fresh_select(cfg, table, runtime, frozenset({"a"})) == ["b"]
    circuits.success("a")

    # A new table (the state changed): its own answer, never the old table's.
    newer = build_table(
        cfg,
        states(state("a", status=EndpointStatus.OFFLINE, models=(SMOL,)), state("b", models=(SMOL,))),
        now=NOW + 1,
        version=2,
        previous=table,
    )
    after = decisions.decide(newer, "smollm2", None, False)
    assert [c.target.name for c in after.candidates] == ["b"]
