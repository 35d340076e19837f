"""Conversation affinity as tables: session keys (sessions.py) and rendezvous placement with bounded loads
(affinity.py), over real routing decisions built from real config and state."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from services.router.affinity import Placement, place
from services.router.routing import Decision, RouteRequest, select
from services.router.sessions import DEFAULT_SOURCES, Source, conversation_prefix, session_key
from services.router.table import build_table
from shared.config import Balancer, RoutingStrategy
from shared.state import EndpointState, EndpointStatus
from tests.router.core_builders import NOW, config, endpoint, state, states

MODEL = "ai/smollm2:latest"
NAMES = ("e1", "e2", "e3", "e4")


def chat(system: str = "Be brief.", first: str = "Hi", *later: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}, {"role": "user", "content": first}]
    for text in later:
        messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": text}]
    return {"model": "smollm2", "messages": messages}


# -- session keys


def test_each_source_in_its_order_and_the_first_match_wins() -> None:
    data = {**chat(), "prompt_cache_key": "pck-1", "user": "u-1"}
    headers = {"X-Claude-Code-Session-Id": "cc-1"}
    by_header = session_key(DEFAULT_SOURCES, headers, data, MODEL, anthropic=False)
    assert by_header == session_key((Source.HEADER,), headers, None, MODEL, anthropic=False)
    by_pck = session_key(DEFAULT_SOURCES, {}, data, MODEL, anthropic=False)
    assert by_pck == session_key((Source.PROMPT_CACHE_KEY,), {}, data, MODEL, anthropic=False)
    assert len({by_header, by_pck, session_key((Source.USER,), {}, data, MODEL, anthropic=False)}) == 3
    # `user` only when configured; without prompt_cache_key the prefix decides.
    no_pck = chat()
    assert session_key(DEFAULT_SOURCES, {}, no_pck, MODEL, anthropic=False) == session_key(
        (Source.PREFIX,), {}, no_pck, MODEL, anthropic=False
    )
    assert session_key((Source.HEADER,), {}, no_pck, MODEL, anthropic=False) is None


@pytest.mark.parametrize(
    "name", ["X-Pier-Session-ID", "X-Olla-Session-ID", "X-Claude-Code-Session-Id", "X-Opencode-Session", "session_id"]
)
def test_agent_session_headers_are_read(name: str) -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict({name: "abc"})
    assert session_key((Source.HEADER,), headers, None, MODEL, anthropic=False) is not None


def test_keys_are_scoped_to_the_model_and_never_hold_the_raw_value() -> None:
    headers = {"X-Pier-Session-ID": "secret-session-value"}
    a = session_key((Source.HEADER,), headers, None, MODEL, anthropic=False)
    b = session_key((Source.HEADER,), headers, None, "ai/gemma3:latest", anthropic=False)
    assert a is not None
    assert b is not None
    assert a != b
    assert "secret" not in a
    assert len(a) == 32


def test_the_prefix_is_the_system_prompt_and_first_user_turn_in_canonical_json() -> None:
    turn1 = chat("Be brief.", "Hi")
    turn5 = chat("Be brief.", "Hi", "more", "and more", "again", "last")
    key1 = session_key((Source.PREFIX,), {}, turn1, MODEL, anthropic=False)
    assert key1 == session_key((Source.PREFIX,), {}, turn5, MODEL, anthropic=False)  # every turn: one key
    assert key1 != session_key((Source.PREFIX,), {}, chat("Be brief.", "Hello"), MODEL, anthropic=False)
    assert key1 != session_key((Source.PREFIX,), {}, chat("Be long.", "Hi"), MODEL, anthropic=False)
    # Key order inside the messages does not matter (canonical JSON).
    reordered = {"messages": [{"content": m["content"], "role": m["role"]} for m in turn1["messages"]]}
    assert key1 == session_key((Source.PREFIX,), {}, reordered, MODEL, anthropic=False)
    # No user turn, or a conversation that does not start with its system prompt and user: no prefix key.
    assert conversation_prefix({"messages": [{"role": "system", "content": "x"}]}, anthropic=False) is None
    assert conversation_prefix({"messages": "not a list"}, anthropic=False) is None


def test_the_anthropic_shape_keys_on_system_and_first_user_turn() -> None:
    def message(*later: str) -> dict[str, Any]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
        for text in later:
            messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": text}]
        return {"model": "smollm2", "max_tokens": 9, "system": "Be brief.", "messages": messages}

    first = session_key((Source.PREFIX,), {}, message(), MODEL, anthropic=True)
    assert first is not None
    assert first == session_key((Source.PREFIX,), {}, message("more", "again"), MODEL, anthropic=True)
    other_system = {**message(), "system": "Be long."}
    assert first != session_key((Source.PREFIX,), {}, other_system, MODEL, anthropic=True)
    with_user = {**message(), "metadata": {"user_id": "u-9"}}
    assert session_key((Source.USER,), {}, with_user, MODEL, anthropic=True) is not None


# -- placement


def decision_for(
    names: tuple[str, ...] = NAMES,
    *,
    inflight: Mapping[str, int] | None = None,
    loaded: tuple[str, ...] = (),
    extra: tuple[EndpointState, ...] = (),
    blocked: frozenset[str] = frozenset(),
) -> Decision:
    # No concurrency limit (DMR's profile has 8): the load tests below hold hundreds of requests in flight.
    cfg = config(
        *(endpoint(n, 100, max_concurrent_requests=0) for n in names), *(endpoint(s.name, s.priority) for s in extra)
    )
    sts = states(
        *(state(n, models=(MODEL,), priority=100, loaded=(MODEL,) if n in loaded else ()) for n in names), *extra
    )
    return select(
        build_table(cfg, sts, now=NOW),
        RouteRequest("smollm2"),
        balancer=Balancer.LEAST_CONNECTIONS,
        strategy=RoutingStrategy.STRICT,
        inflight=inflight or {},
        blocked=blocked,
        rotation=0,
        rng=random.Random(3),
    )


def placed(decision: Decision, key: str, inflight: Mapping[str, int] | None = None, eps: float = 0.25) -> Placement:
    result = place(decision.candidates, key, MODEL, inflight or {}, load_factor=eps)
    assert result is not None
    return result


def first(decision: Decision, key: str, inflight: Mapping[str, int] | None = None) -> str:
    return placed(decision, key, inflight).candidates[0].target.name


def test_a_key_always_lands_on_the_same_endpoint_and_keys_spread() -> None:
    decision = decision_for()
    chosen = {f"k{i}": first(decision, f"k{i}") for i in range(400)}
    for key, name in list(chosen.items())[:50]:
        assert first(decision_for(), key) == name  # a rebuilt table (another replica): the same answer
        assert placed(decision, key).mark == "hit"
    spread = Counter(chosen.values())
    assert set(spread) == set(NAMES)
    assert max(spread.values()) < 2 * min(spread.values())  # rendezvous hashing spreads keys evenly


def test_failover_order_is_kept_behind_the_chosen_endpoint() -> None:
    decision = decision_for()
    result = placed(decision, "k1")
    rest = [c.target.name for c in result.candidates[1:]]
    assert rest == [c.target.name for c in decision.candidates if c is not result.candidates[0]]
    assert len(result.candidates) == len(decision.candidates)


def test_only_the_sessions_of_an_endpoint_that_leaves_move_and_then_stay() -> None:
    before = {f"k{i}": first(decision_for(), f"k{i}") for i in range(400)}
    without_e2 = decision_for(("e1", "e3", "e4"))
    after = {key: first(without_e2, key) for key in before}
    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key, name in before.items() if name == "e2"}  # only e2's sessions, all of them
    again = {key: first(decision_for(("e1", "e3", "e4")), key) for key in before}
    assert again == after  # and they stay where they moved
    # e2 back: its sessions return to it (rendezvous is a function of the membership, nothing else).
    assert {key: first(decision_for(), key) for key in before} == before


def test_bounded_loads_pass_a_hot_key_on_and_say_moved() -> None:
    decision = decision_for()
    key = "hot"
    home = first(decision, key)
    # Its endpoint holds 6 of 8 requests in flight: above (1 + 0.25) x the mean, so the key goes to its next choice.
    busy = {home: 6, **{n: 0 for n in NAMES if n != home}}
    busy[next(n for n in NAMES if n != home)] = 2
    result = placed(decision_for(inflight=busy), key, busy)
    assert result.candidates[0].target.name != home
    assert result.mark == "moved"


def test_load_stays_within_the_bound_under_a_skewed_key_mix() -> None:
    """Zipf-like keys arrive and stay in flight: no endpoint ever exceeds ceil((1 + eps) x mean)."""
    rng = random.Random(11)
    keys = [f"user-{int(rng.paretovariate(1.2))}" for _ in range(300)]
    assert Counter(keys).most_common(1)[0][1] > 30  # skewed: one key carries a good share
    inflight: Counter[str] = Counter()
    eps = 0.25
    for key in keys:
        decision = decision_for(inflight=inflight)
        chosen = placed(decision, key, inflight, eps).candidates[0].target.name
        total = sum(inflight.values())
        bound = -(-(1 + eps) * (total + 1) // len(NAMES))
        inflight[chosen] += 1
        assert inflight[chosen] <= bound
    assert max(inflight.values()) <= -(-(1 + eps) * len(keys) // len(NAMES))


def test_warm_endpoints_of_the_tier_come_first() -> None:
    decision = decision_for(loaded=("e3", "e4"))
    homes = {first(decision, f"k{i}") for i in range(60)}
    assert homes == {"e3", "e4"}
    # A key whose first choice overall is a cold endpoint goes warm, and says it moved.
    cold_home = next(k for k in (f"k{i}" for i in range(200)) if first(decision_for(), k) in ("e1", "e2"))
    assert placed(decision, cold_home).mark == "moved"


def test_affinity_never_beats_health_or_priority() -> None:
    lower = state("backup", models=(MODEL,), priority=10)
    decision = decision_for(("e1", "e2"), extra=(lower,))
    for i in range(40):
        result = placed(decision, f"k{i}")
        assert result.candidates[0].target.name in ("e1", "e2")
        assert result.candidates[-1].target.name == "backup"
    busy = state("slow", models=(MODEL,), priority=100, status=EndpointStatus.BUSY)
    decision = decision_for(("e1", "e2"), extra=(busy,))
    assert all(placed(decision, f"k{i}").candidates[0].target.name != "slow" for i in range(40))
    # One healthy endpoint in the top tier: nothing to choose, routing's order stands.
    assert place(decision_for(("e1",)).candidates, "k", MODEL, {}, load_factor=0.25) is None
    # Only blocked endpoints left: no affinity on the last resort.
    blocked = decision_for(("e1", "e2"), blocked=frozenset({"e1", "e2"}))
    assert place(blocked.candidates, "k", MODEL, {}, load_factor=0.25) is None


def test_the_configured_order_decides_even_when_the_body_was_not_parsed() -> None:
    """The proxy reads the model without parsing the body: a header must not jump ahead of a body source."""
    import json

    from services.router.affinity import Affinity
    from services.router.runtime import Runtime
    from services.router.settings import RouterSettings

    body = chat("Be brief.", "Hi")
    decision = decision_for()
    prefix_key = session_key((Source.PREFIX,), {}, body, MODEL, anthropic=False)
    assert prefix_key is not None
    by_prefix = first(decision, prefix_key)
    # A session header whose own choice differs, so the two orders can be told apart.
    session = next(f"s-{i}" for i in range(100) if first(decision, header_key(f"s-{i}")) != by_prefix)
    headers = {"X-Pier-Session-ID": session}
    raw = json.dumps(body).encode()
    for sources, expected in (("prefix,header", by_prefix), ("header,prefix", first(decision, header_key(session)))):
        affinity = Affinity(RouterSettings(affinity_sources=sources), Runtime(seed=1))  # type: ignore[arg-type]
        placed_now = affinity.place(headers, raw, None, decision, anthropic=False)
        assert placed_now is not None
        assert placed_now.candidates[0].target.name == expected, sources


def header_key(session: str) -> str:
    key = session_key((Source.HEADER,), {"X-Pier-Session-ID": session}, None, MODEL, anthropic=False)
    assert key is not None
    return key


def test_a_role_of_any_json_type_gives_no_prefix_and_no_error() -> None:
    # An unhashable role once raised TypeError in the set lookup (a 500 on the request).
    roles: list[object] = [{}, [], None, 5]
    for role in roles:
        data = {"messages": [{"role": role, "content": "x"}, {"role": "user", "content": "Hi"}]}
        assert conversation_prefix(data, anthropic=False) is None
