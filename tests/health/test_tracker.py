"""Folding probe results into endpoint state: failures, backoff, Retry-After, inventory kept or dropped."""

from __future__ import annotations

import pytest

from services.health.classify import Aux
from services.health.probe import ProbeResult
from services.health.tracker import Decision, initial_state, next_state, state_ttl_s
from shared.state import EndpointState, EndpointStatus, LoadedModel, PulledModel
from tests.health.endpoints import endpoint

EP = endpoint(check_interval="1s", check_timeout="500ms")
NOW = 1000.0


def ok(**extra: object) -> ProbeResult:
    fields: dict[str, object] = {
        "models": Aux("ok", ("ai/smollm2:latest",)),
        "pulled": Aux("ok", (PulledModel(name="ai/smollm2:latest"),)),
        "loaded": Aux("ok", (LoadedModel(name="ai/smollm2:latest"),)),
        "engines": Aux("ok", {"llama.cpp": "Running"}),
        "version": Aux("ok", "v1.2.6"),
    }
    fields.update(extra)
    return ProbeResult(EndpointStatus.HEALTHY, 3.0, **fields)  # type: ignore[arg-type]


OFFLINE = ProbeResult(EndpointStatus.OFFLINE, None, "connection refused")
UNHEALTHY = ProbeResult(EndpointStatus.UNHEALTHY, 2.0, "HTTP 500: boom")


def step(prev: EndpointState | None, result: ProbeResult, now: float = NOW) -> Decision:
    return next_state(EP, prev, result, now=now, writer="w1", max_backoff_s=60.0)


def test_first_success() -> None:
    d = step(None, ok())
    s = d.state
    assert s.status is EndpointStatus.HEALTHY
    assert (s.name, s.url, s.type, s.priority, s.source, s.writer) == (
        "dmr",
        "http://127.0.0.1:1",
        "docker-model-runner",
        95,
        "static",
        "w1",
    )
    assert s.models == ("ai/smollm2:latest",)
    assert s.models_known
    assert s.pulled_known
    assert s.loaded_known
    assert s.version == "v1.2.6"
    assert s.engines == {"llama.cpp": "Running"}
    assert s.last_success_at == NOW
    assert s.checked_at == NOW
    assert s.consecutive_failures == 0
    assert d.next_delay_s == 1.0
    assert s.next_check_at == NOW + 1.0
    assert s.ttl_s == 5.0


def test_failures_count_up_and_back_off_then_reset() -> None:
    state = step(None, ok()).state
    delays = []
    for i in range(6):
        d = step(state, OFFLINE, now=NOW + i)
        state = d.state
        delays.append(d.next_delay_s)
        # The state outlives the wait until the next write, however long the backoff.
        assert state.ttl_s > d.next_delay_s
    assert delays == [1.0, 2.0, 4.0, 8.0, 12.0, 12.0]
    assert state.consecutive_failures == 6
    assert state.status is EndpointStatus.OFFLINE
    assert state.last_error == "connection refused"
    # Known inventory survives an outage (the router does not route to offline endpoints anyway).
    assert state.models == ("ai/smollm2:latest",)
    assert state.version == "v1.2.6"
    assert state.last_success_at == NOW
    back = step(state, ok(), now=NOW + 100)
    assert back.state.consecutive_failures == 0
    assert back.next_delay_s == 1.0
    assert back.state.last_error is None
    assert back.state.status is EndpointStatus.HEALTHY


def test_unhealthy_counts_as_failure() -> None:
    d = step(step(None, UNHEALTHY).state, UNHEALTHY)
    assert d.state.consecutive_failures == 2
    assert d.next_delay_s == 2.0
    assert d.state.latency_ms == 2.0


def test_config_error_is_not_a_failure() -> None:
    failing = step(step(None, OFFLINE).state, OFFLINE).state
    d = step(failing, ProbeResult(EndpointStatus.CONFIG_ERROR, 1.0, "HTTP 401: unauthorized"))
    assert d.state.consecutive_failures == 0
    assert d.next_delay_s == 1.0
    assert d.state.status is EndpointStatus.CONFIG_ERROR
    assert d.state.last_error == "HTTP 401: unauthorized"
    assert d.state.last_success_at is None


@pytest.mark.parametrize(("retry_after_s", "wait_s"), [(7.0, 7.0), (0.2, 1.0), (None, 1.0)])
def test_rate_limited_waits_for_retry_after(retry_after_s: float | None, wait_s: float) -> None:
    d = step(None, ProbeResult(EndpointStatus.RATE_LIMITED, 1.0, "HTTP 429", retry_after_s))
    assert d.next_delay_s == wait_s
    assert d.state.retry_after_until == NOW + wait_s
    assert d.state.ttl_s > wait_s


def test_absent_routes_are_unknown_not_failures() -> None:
    """An old DMR without /engines/ps or /version: still healthy, loaded not known."""
    d = step(None, ok(loaded=Aux("absent"), version=Aux("absent"), pulled=Aux("absent")))
    s = d.state
    assert s.status is EndpointStatus.HEALTHY
    assert s.loaded == ()
    assert not s.loaded_known
    assert s.pulled == ()
    assert not s.pulled_known
    assert s.version is None
    assert s.models_known


def test_a_failed_inventory_route_keeps_the_last_value() -> None:
    first = step(None, ok()).state
    s = step(first, ok(loaded=Aux("failed", error="timeout"), version=Aux("failed"))).state
    assert s.loaded == first.loaded
    assert s.loaded_known
    assert s.version == "v1.2.6"


def test_empty_list_is_known_and_healthy() -> None:
    s = step(None, ok(models=Aux("ok", ()), pulled=Aux("ok", ()), loaded=Aux("ok", ()))).state
    assert s.status is EndpointStatus.HEALTHY
    assert s.models == ()
    assert s.models_known
    assert s.pulled_known
    assert s.loaded_known


def test_initial_state_is_unknown() -> None:
    s = initial_state(EP, writer="w")
    assert s.status is EndpointStatus.UNKNOWN
    assert not s.models_known


def test_ttl_is_a_few_intervals() -> None:
    slow = endpoint(check_interval="10s", check_timeout="2s")
    assert state_ttl_s(slow, 10.0) == 32.0
    assert state_ttl_s(slow, 60.0) == 72.0
    assert state_ttl_s(EP, 1.0) == 5.0
