"""What to preload now: a pure function of the endpoint states and the wanted models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shared.state import EndpointState


@dataclass(frozen=True, slots=True)
class Preload:
    endpoint: EndpointState
    model: str


def plan_preloads(
    states: Mapping[str, EndpointState], wanted: Iterable[str], *, in_flight: frozenset[tuple[str, str]], now: float
) -> list[Preload]:
    """Every (routable endpoint, wanted model) where the model is on the endpoint but not loaded or loading.

    Endpoints whose loaded set is unknown (old DMR without /engines/ps) are preloaded too: a preload of a
    loaded model is cheap, a cold first request is not.
    """
    wanted_set = frozenset(wanted)
    plan: list[Preload] = []
    for name in sorted(states):
        state = states[name]
        if not state.status.routable or state.expired(now):
            continue
        present = state.all_models() & wanted_set
        loaded_or_loading = {m.name for m in state.loaded}
        for model in sorted(present):
            if (name, model) in in_flight:
                continue
            if state.loaded_known and model in loaded_or_loading:
                continue
            plan.append(Preload(state, model))
    return plan
