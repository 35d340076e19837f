"""Which events a new endpoint state implies, compared with the last one published: a pure function.

Only real changes count: the status, the set of models listed or pulled, the loaded set (a model in or
out, or its loading flag), the DMR version, or the endpoint's own definition. Latency, timestamps and
per-request fields (`in_use`, `last_used`) change on every probe and are never events.
"""

from __future__ import annotations

from typing import Any

from shared.inventory import loaded_signature
from shared.state import EndpointState, EventKind

_DEFINITION_FIELDS = ("url", "type", "priority", "source")


def _model_names(state: EndpointState) -> frozenset[str]:
    return frozenset(state.models) | {m.name for m in state.pulled}


def changes(old: EndpointState | None, new: EndpointState) -> list[tuple[EventKind, dict[str, Any]]]:
    """The events to publish for `new`, each with a small `detail`; [] when nothing real changed."""
    if old is None:
        return [(EventKind.ENDPOINT_ADDED, {"status": new.status.value})]
    out: list[tuple[EventKind, dict[str, Any]]] = []
    redefined = [f for f in _DEFINITION_FIELDS if getattr(old, f) != getattr(new, f)]
    if redefined:
        out.append((EventKind.ENDPOINT_ADDED, {"changed": redefined, "status": new.status.value}))
    if old.status != new.status:
        detail: dict[str, Any] = {"previous": old.status.value, "status": new.status.value}
        if new.last_error:
            detail["error"] = new.last_error
        out.append((EventKind.STATUS_CHANGED, detail))
    old_models, new_models = _model_names(old), _model_names(new)
    if (
        old_models != new_models
        or old.models_known != new.models_known
        or old.pulled_known != new.pulled_known
        or frozenset(old.models) != frozenset(new.models)
    ):
        out.append(
            (
                EventKind.MODELS_CHANGED,
                {"added": sorted(new_models - old_models), "removed": sorted(old_models - new_models)},
            )
        )
    if old.loaded_known != new.loaded_known or loaded_signature(old.loaded) != loaded_signature(new.loaded):
        old_loaded, new_loaded = old.loaded_names(), new.loaded_names()
        out.append(
            (
                EventKind.LOADED_CHANGED,
                {
                    "loaded": sorted(new_loaded - old_loaded),
                    "unloaded": sorted(old_loaded - new_loaded),
                    "loading": sorted(m.name for m in new.loaded if m.loading),
                },
            )
        )
    if old.version != new.version:
        out.append((EventKind.VERSION_CHANGED, {"previous": old.version, "version": new.version}))
    return out
