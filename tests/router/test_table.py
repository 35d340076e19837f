"""build_table: targets from config and state, status derivation, and the precomputed per-model tiers."""

from __future__ import annotations

from services.router.table import Tier, build_table
from shared.state import EndpointStatus
from tests.router.core_builders import NOW, config, endpoint, state, states

SMOL = "ai/smollm2:latest"
LLAMA = "ai/llama3.2:1b"


def test_config_endpoint_without_state_is_unknown_and_not_routable() -> None:
    table = build_table(config(endpoint("a")), {}, now=NOW)
    target = table.targets["a"]
    assert target.status is EndpointStatus.UNKNOWN
    assert not target.known
    assert not target.routable
    assert target.models == frozenset()
    assert not target.models_known
    assert target.state is None
    assert not table.listing_known


def test_healthy_state_gives_a_routable_target_with_profile_fields() -> None:
    cfg = config(endpoint("a", priority=90, headers={"X-Team": "ml"}, auth={"type": "bearer", "token": "t0k"}))
    s = state("a", models=(SMOL,), pulled=(LLAMA,), loaded=(SMOL,), loading=(LLAMA,), engines={"LLAMA.CPP": "Running"})
    target = build_table(cfg, states(s), now=NOW).targets["a"]
    assert target.routable
    assert target.priority == 90
    assert target.url == "http://a.test:12434"
    assert target.models == {SMOL, LLAMA}  # listed | pulled | loaded
    assert target.loaded == {SMOL}  # the loading one is not loaded yet
    assert target.engines == {"llama.cpp": "Running"}
    assert target.api_prefix == "/engines/v1"
    assert target.engine_paths
    assert target.anthropic_native
    assert target.max_concurrent == 8  # the DMR profile's limit
    assert target.response_header_timeout_s == 300.0
    assert dict(target.headers) == {"X-Team": "ml", "Authorization": "Bearer t0k"}
    assert target.state is s


def test_endpoint_overrides_beat_the_profile() -> None:
    cfg = config(endpoint("a", max_concurrent_requests=2, request_timeout="30s", response_header_timeout="10s"))
    target = build_table(cfg, {}, now=NOW).targets["a"]
    assert target.max_concurrent == 2
    assert target.request_timeout_s == 30.0
    assert target.response_header_timeout_s == 10.0


def test_expired_state_is_unknown_but_keeps_its_last_listing() -> None:
    cfg = config(endpoint("a"))
    s = state("a", models=(SMOL,), checked_at=NOW - 20, ttl_s=15)
    table = build_table(cfg, states(s), now=NOW)
    target = table.targets["a"]
    assert s.expired(NOW)
    assert target.status is EndpointStatus.UNKNOWN
    assert not target.known
    assert target.models == {SMOL}
    route = table.routes[SMOL]
    assert route.known == ()
    assert [t.name for tier in route.unknown for t in tier.targets] == ["a"]
    # Just before the TTL ran out it was healthy.
    assert build_table(cfg, states(s), now=NOW - 6).targets["a"].routable


def test_local_down_is_offline_until_its_time() -> None:
    cfg = config(endpoint("a"))
    s = state("a", models=(SMOL,))
    down = build_table(cfg, states(s), now=NOW, local_down={"a": NOW + 10}).targets["a"]
    assert down.status is EndpointStatus.OFFLINE
    assert down.local_down
    assert not down.routable
    later = build_table(cfg, states(s), now=NOW + 11, local_down={"a": NOW + 10}).targets["a"]
    assert later.status is EndpointStatus.HEALTHY
    assert not later.local_down


def test_discovered_endpoint_is_resolved_with_its_type_profile() -> None:
    cfg = config(endpoint("a"))
    found = state("auto-ollama", type_="ollama", priority=40, source="auto", models=("ai/phi3:latest",))
    stranger = state("weird", type_="no-such-type", models=(SMOL,))
    table = build_table(cfg, states(found, stranger), now=NOW)
    target = table.targets["auto-ollama"]
    assert target.source == "auto"
    assert target.type == "ollama"
    assert target.priority == 40
    assert target.api_prefix == "/v1"
    assert not target.engine_paths
    assert target.max_concurrent == 4
    assert target.routable
    assert "weird" not in table.targets  # a type without a profile cannot be proxied
    assert table.by_model["ai/phi3:latest"] == (target,)


def test_discovered_alias_type_resolves_to_profile_name() -> None:
    table = build_table(config(), states(state("v", type_="vllm", models=("org/m:latest",))), now=NOW)
    assert table.targets["v"].type == "openai-compatible"


def test_model_filter_hides_models_from_the_target_and_the_table() -> None:
    cfg = config(
        endpoint("a", model_filter={"exclude": ["*embed*"]}), endpoint("b", model_filter={"include": ["ai/*"]})
    )
    s_a = state("a", models=(SMOL, "ai/mxbai-embed:latest"))
    s_b = state("b", models=(SMOL, "huggingface.co/org/x:latest"))
    table = build_table(cfg, states(s_a, s_b), now=NOW)
    assert table.targets["a"].models == {SMOL}
    assert table.targets["b"].models == {SMOL}
    assert table.all_models() == {SMOL}
    assert table.model_names == (SMOL,)


def test_by_model_is_priority_desc_and_routes_group_healthy_then_busy_tiers() -> None:
    cfg = config(
        endpoint("low", priority=10),
        endpoint("b-high", priority=100),
        endpoint("a-high", priority=100),
        endpoint("busy-top", priority=200),
        endpoint("down", priority=300),
    )
    table = build_table(
        cfg,
        states(
            state("low", models=(SMOL,)),
            state("b-high", models=(SMOL,)),
            state("a-high", models=(SMOL,)),
            state("busy-top", status=EndpointStatus.BUSY, models=(SMOL,)),
            state("down", status=EndpointStatus.OFFLINE, models=(SMOL,)),
        ),
        now=NOW,
    )
    assert [t.name for t in table.by_model[SMOL]] == ["down", "busy-top", "a-high", "b-high", "low"]
    tiers = table.routes[SMOL].known
    assert [(tier.priority, tier.busy, [t.name for t in tier.targets]) for tier in tiers] == [
        (100, False, ["a-high", "b-high"]),
        (10, False, ["low"]),
        (200, True, ["busy-top"]),
    ]
    assert table.routes[SMOL].exists


def test_alias_route_sends_each_target_the_first_real_name_it_has() -> None:
    cfg = config(endpoint("a"), endpoint("b"), endpoint("c"), aliases={"Fast": ["smollm2", "llama3.2:1b"]})
    table = build_table(
        cfg,
        states(state("a", models=(SMOL,)), state("b", models=(LLAMA,)), state("c", models=(SMOL, LLAMA))),
        now=NOW,
    )
    route = table.routes["ai/fast:latest"]  # alias keys are normalised like model names
    assert dict(route.upstream) == {"a": "smollm2", "b": "llama3.2:1b", "c": "smollm2"}
    assert route.rewrite_to == "smollm2"
    assert "ai/fast:latest" not in table.all_models()


def names(tiers: tuple[Tier, ...]) -> list[str]:
    return sorted(t.name for tier in tiers for t in tier.targets)


def test_fallback_tiers_split_lazy_listings_from_known_ones() -> None:
    cfg = config(endpoint("empty"), endpoint("lists"), endpoint("never"), endpoint("gone"))
    table = build_table(
        cfg,
        states(
            state("empty", models=()),
            state("lists", models=(SMOL,)),
            state("never", models=(), models_known=False),
        ),
        now=NOW,
    )
    assert names(table.fallback.lazy) == ["empty", "never"]
    assert names(table.fallback.rest) == ["lists"]
    assert names(table.fallback.unknown) == ["gone"]
    assert table.listing_known


def test_unchanged_targets_are_reused_from_the_previous_table() -> None:
    cfg = config(endpoint("a"), endpoint("b"))
    s_a, s_b = state("a", models=(SMOL,)), state("b", models=(SMOL,))
    first = build_table(cfg, states(s_a, s_b), now=NOW, version=1)
    s_b2 = state("b", models=(SMOL, LLAMA), checked_at=NOW + 1)
    second = build_table(cfg, states(s_a, s_b2), now=NOW + 1, version=2, previous=first)
    assert second.targets["a"] is first.targets["a"]
    assert second.targets["b"] is not first.targets["b"]
    assert second.targets["b"].models == {SMOL, LLAMA}
    assert second.version == 2
    # The same state judged at a later time (expired) is rebuilt, not reused.
    third = build_table(cfg, states(s_a, s_b2), now=NOW + 100, version=3, previous=second)
    assert third.targets["a"] is not second.targets["a"]
    assert not third.targets["a"].known
