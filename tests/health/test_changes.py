"""Which events a new state implies: one per real change, none in steady state."""

from __future__ import annotations

from typing import Any

from services.health.changes import changes
from shared.state import EndpointState, EndpointStatus, EventKind, LoadedModel, PulledModel

BASE = EndpointState(
    name="dmr",
    url="http://127.0.0.1:1",
    type="docker-model-runner",
    priority=95,
    status=EndpointStatus.HEALTHY,
    latency_ms=2.0,
    checked_at=100.0,
    version="v1",
    models=("ai/a:latest",),
    models_known=True,
    pulled=(PulledModel(name="ai/a:latest"),),
    pulled_known=True,
    loaded=(LoadedModel(name="ai/a:latest", backend="llama.cpp"),),
    loaded_known=True,
)


def kinds(old: EndpointState | None, **update: Any) -> list[EventKind]:
    return [kind for kind, _ in changes(old, BASE.model_copy(update=update))]


def test_new_endpoint_is_added_once() -> None:
    assert kinds(None) == [EventKind.ENDPOINT_ADDED]


def test_steady_state_is_silent() -> None:
    # Timestamps, latency and per-request runner fields change on every probe: no event.
    busy_runner = (LoadedModel(name="ai/a:latest", backend="llama.cpp", in_use=True, last_used="t2"),)
    assert (
        kinds(
            BASE,
            latency_ms=9.0,
            checked_at=200.0,
            next_check_at=201.0,
            last_success_at=200.0,
            loaded=busy_runner,
            engines={"llama.cpp": "Running: other sha"},
            ttl_s=20.0,
            writer="other",
        )
        == []
    )


def test_status_change() -> None:
    result = changes(BASE, BASE.model_copy(update={"status": EndpointStatus.OFFLINE, "last_error": "refused"}))
    assert result == [(EventKind.STATUS_CHANGED, {"previous": "healthy", "status": "offline", "error": "refused"})]


def test_models_added_and_removed() -> None:
    result = changes(
        BASE,
        BASE.model_copy(update={"models": ("ai/b:latest",), "pulled": (PulledModel(name="ai/b:latest"),)}),
    )
    assert result == [(EventKind.MODELS_CHANGED, {"added": ["ai/b:latest"], "removed": ["ai/a:latest"]})]
    assert kinds(BASE, pulled_known=False, pulled=()) == [EventKind.MODELS_CHANGED]
    # Listed vs pulled can differ (old DMR lists only loaded models): a change in the listing alone counts.
    assert kinds(BASE, models=()) == [EventKind.MODELS_CHANGED]


def test_loaded_changes() -> None:
    assert kinds(BASE, loaded=()) == [EventKind.LOADED_CHANGED]
    loading = (LoadedModel(name="ai/a:latest", backend="llama.cpp", loading=True),)
    result = changes(BASE, BASE.model_copy(update={"loaded": loading}))
    assert result == [
        (EventKind.LOADED_CHANGED, {"loaded": [], "unloaded": ["ai/a:latest"], "loading": ["ai/a:latest"]})
    ]
    assert kinds(BASE, loaded_known=False, loaded=()) == [EventKind.LOADED_CHANGED]


def test_version_change() -> None:
    assert changes(BASE, BASE.model_copy(update={"version": "v2"})) == [
        (EventKind.VERSION_CHANGED, {"previous": "v1", "version": "v2"})
    ]


def test_several_changes_at_once_one_event_each() -> None:
    assert kinds(BASE, status=EndpointStatus.UNHEALTHY, version="v2", loaded=()) == [
        EventKind.STATUS_CHANGED,
        EventKind.LOADED_CHANGED,
        EventKind.VERSION_CHANGED,
    ]


def test_redefined_endpoint_is_announced() -> None:
    result = changes(BASE, BASE.model_copy(update={"url": "http://127.0.0.1:2", "priority": 10}))
    assert result == [(EventKind.ENDPOINT_ADDED, {"changed": ["url", "priority"], "status": "healthy"})]
