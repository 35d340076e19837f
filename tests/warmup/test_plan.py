"""`plan_endpoint` and the wanted list: pure functions, tested in tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.warmup.plan import Knobs, Memory, StepKind, go_duration_s, go_time, plan_endpoint
from services.warmup.wanted import Wanted, build_warmup_config
from shared.errors import ConfigError
from shared.state import EndpointState, EndpointStatus, LoadedModel, WarmPhase, WarmPolicy

NOW = 1_800_000_000.0
A, B, C, X = "ai/a:latest", "ai/b:latest", "ai/c:latest", "ai/x:latest"


def state(*models: str) -> EndpointState:
    return EndpointState(
        name="e",
        url="http://e",
        type="docker-model-runner",
        priority=100,
        status=EndpointStatus.HEALTHY,
        models=models,
        models_known=True,
        loaded_known=True,
    )


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def runner(
    name: str, *, used: float = NOW, keep: str | None = None, in_use: bool = False, loading: bool = False
) -> LoadedModel:
    return LoadedModel(name=name, last_used=stamp(used), keep_alive=keep, in_use=in_use, loading=loading)


KNOBS = Knobs(runner_limit=8, default_keep_alive_s=300, keep_margin_s=30)


def test_go_formats() -> None:
    assert [go_duration_s(t) for t in ("10m0s", "-1", "1m30.5s", "0s", "2h0m0s", None, "soon")] == [
        600,
        -1,
        90.5,
        0,
        7200,
        None,
        None,
    ]
    assert go_time("2026-01-01T00:00:00.123456789Z") == pytest.approx(1767225600.123456, abs=1e-6)
    assert go_time("garbage") is None


def test_cold_models_load_in_list_order() -> None:
    plan = plan_endpoint(state(A, B), [], [Wanted(B), Wanted(A)], {}, KNOBS, NOW)
    assert plan.step is not None
    assert (plan.step.kind, plan.step.model) == (StepKind.LOAD, B)
    assert {m: r.phase for m, r in plan.reports.items()} == {A: WarmPhase.COLD, B: WarmPhase.COLD}


def test_a_model_the_endpoint_lacks_is_skipped_unless_pulling() -> None:
    assert plan_endpoint(state(A), [], [Wanted(B)], {}, KNOBS, NOW).step is None
    pull = plan_endpoint(state(A), [], [Wanted(B)], {}, Knobs(8, 300, 30, pull=True), NOW)
    assert pull.step is not None
    assert pull.step.kind is StepKind.PULL


def test_keep_refreshes_before_keep_alive_runs_out() -> None:
    wanted = [Wanted(A)]
    fresh = plan_endpoint(state(A), [runner(A, used=NOW - 10, keep="1m0s")], wanted, {}, KNOBS, NOW)
    assert fresh.step is None
    assert fresh.wake_at == pytest.approx(NOW - 10 + 60 - 20, abs=0.01)  # margin: a third of 60 s
    due = plan_endpoint(state(A), [runner(A, used=NOW - 45, keep="1m0s")], wanted, {}, KNOBS, NOW)
    assert due.step is not None
    assert due.step.kind is StepKind.REFRESH
    # No keep_alive shown: DMR's default (here 300 s), margin 30 s.
    default = plan_endpoint(state(A), [runner(A, used=NOW)], wanted, {}, KNOBS, NOW)
    assert default.wake_at == pytest.approx(NOW + 270, abs=0.01)


def test_pin_configures_until_ps_shows_minus_one() -> None:
    wanted = [Wanted(A, WarmPolicy.PIN)]
    cold = plan_endpoint(state(A), [], wanted, {}, KNOBS, NOW)
    assert cold.step is not None
    assert cold.step.kind is StepKind.PIN
    restarted = plan_endpoint(state(A), [runner(A, keep="5m0s")], wanted, {}, KNOBS, NOW)
    assert restarted.step is not None
    assert restarted.step.kind is StepKind.PIN
    busy = plan_endpoint(state(A), [runner(A, keep="5m0s", in_use=True)], wanted, {}, KNOBS, NOW)
    assert busy.step is None  # DMR answers 409 to a busy runner: wait
    assert busy.wake_at is not None
    pinned = plan_endpoint(state(A), [runner(A, keep="-1")], wanted, {}, KNOBS, NOW)
    assert (pinned.step, pinned.wake_at, pinned.reports[A].phase) == (None, None, WarmPhase.WARM)


def test_preload_loads_once_per_routable_period() -> None:
    wanted = [Wanted(A, WarmPolicy.PRELOAD)]
    first = plan_endpoint(state(A), [], wanted, {A: Memory()}, KNOBS, NOW)
    assert first.step is not None
    again = plan_endpoint(state(A), [], wanted, {A: Memory(preloaded=True)}, KNOBS, NOW)
    assert again.step is None
    assert again.reports[A].phase is WarmPhase.COLD


def test_the_runner_limit_decides_what_fits() -> None:
    knobs = Knobs(runner_limit=2, default_keep_alive_s=300, keep_margin_s=30)
    # One runner of another model serves a request: only one wanted model fits, the first of the list.
    plan = plan_endpoint(state(A, B, X), [runner(X, in_use=True)], [Wanted(A), Wanted(B)], {}, knobs, NOW)
    assert plan.step is not None
    assert plan.step.model == A
    assert plan.reports[B].fits is False
    assert "runner limit 2" in str(plan.reports[B].detail)
    assert plan.wake_at is not None  # the busy runner's end is no event: look again soon


def test_a_full_endpoint_unloads_an_idle_unwanted_runner_never_a_busy_one() -> None:
    knobs = Knobs(runner_limit=2, default_keep_alive_s=300, keep_margin_s=30)
    runners = [runner(X, used=NOW - 50), runner(C, used=NOW - 5)]
    plan = plan_endpoint(state(A, C, X), runners, [Wanted(A)], {}, knobs, NOW)
    assert plan.step is not None
    assert (plan.step.kind, plan.step.model) == (StepKind.UNLOAD, X)  # the least recently used idle one
    busy = [runner(X, in_use=True), runner(C, loading=True)]
    waiting = plan_endpoint(state(A, C, X), busy, [Wanted(A)], {}, knobs, NOW)
    assert waiting.step is None
    assert waiting.reports[A].fits is False  # both runners are busy with other models: nothing fits


def test_a_failed_model_waits_for_its_retry_time() -> None:
    mem = {A: Memory(failures=2, next_retry_at=NOW + 20, last_error="HTTP 500")}
    plan = plan_endpoint(state(A), [], [Wanted(A)], mem, KNOBS, NOW)
    assert plan.step is None
    assert plan.wake_at == NOW + 20
    assert plan.reports[A].phase is WarmPhase.FAILED
    later = plan_endpoint(state(A), [], [Wanted(A)], mem, KNOBS, NOW + 21)
    assert later.step is not None


def test_wanted_list_from_file_and_environment() -> None:
    section = {
        "models": ["smollm2", {"model": "ai/qwen3", "policy": "pin", "endpoints": ["dmr-a"]}],
        "runner_limits": {"dmr-a": 2},
    }
    cfg = build_warmup_config(section, ["ai/smollm2:latest", "gemma3"])
    assert [(w.model, w.policy) for w in cfg.wanted] == [
        ("ai/smollm2:latest", WarmPolicy.KEEP),
        ("ai/qwen3:latest", WarmPolicy.PIN),
        ("ai/gemma3:latest", WarmPolicy.KEEP),
    ]
    assert [w.model for w in cfg.for_endpoint("dmr-b")] == ["ai/smollm2:latest", "ai/gemma3:latest"]
    assert cfg.runner_limits == {"dmr-a": 2}


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"models": [{"model": "a", "policy": "forever"}]}, "warmup.models[0].policy"),
        ({"models": [{"policy": "pin"}]}, "warmup.models[0].model"),
        ({"models": "a"}, "warmup.models"),
        ({"runner_limits": {"e": 0}}, "warmup.runner_limits.e"),
        ({"modles": []}, "warmup.modles"),
    ],
)
def test_bad_warmup_sections_name_the_key(section: object, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_warmup_config(section, [])
    assert caught.value.key == key
