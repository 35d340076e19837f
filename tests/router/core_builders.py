"""Small builders for the routing-core tests: a real resolved config and real `EndpointState` values."""

from __future__ import annotations

from typing import Any

from shared.config import PierConfig, build_config
from shared.profiles import load_profiles
from shared.state import EndpointState, EndpointStatus, LoadedModel, PulledModel

NOW = 1_700_000_000.0
PROFILES = load_profiles()


def endpoint(
    name: str, priority: int | None = None, type_: str = "docker-model-runner", **extra: Any
) -> dict[str, Any]:
    """One endpoint as a config file would list it."""
    raw: dict[str, Any] = {"name": name, "url": f"http://{name}.test:12434", "type": type_, **extra}
    if priority is not None:
        raw["priority"] = priority
    return raw


def config(
    *endpoints: dict[str, Any],
    aliases: dict[str, Any] | None = None,
    balancer: str = "priority",
    strategy: str = "strict",
) -> PierConfig:
    data: dict[str, Any] = {
        "endpoints": list(endpoints),
        "load_balancer": balancer,
        "routing_strategy": strategy,
    }
    if aliases:
        data["model_aliases"] = aliases
    return build_config(data, PROFILES)


def state(
    name: str,
    *,
    status: EndpointStatus = EndpointStatus.HEALTHY,
    models: tuple[str, ...] = (),
    pulled: tuple[str | PulledModel, ...] = (),
    loaded: tuple[str, ...] = (),
    loading: tuple[str, ...] = (),
    models_known: bool = True,
    checked_at: float = NOW,
    ttl_s: float = 15.0,
    engines: dict[str, str] | None = None,
    type_: str = "docker-model-runner",
    priority: int = 95,
    source: str = "static",
    url: str | None = None,
) -> EndpointState:
    """A state as the health worker writes it (model names already normalised)."""
    return EndpointState(
        name=name,
        url=url or f"http://{name}.test:12434",
        type=type_,
        priority=priority,
        source=source,
        status=status,
        checked_at=checked_at,
        ttl_s=ttl_s,
        models=models,
        models_known=models_known,
        pulled=tuple(p if isinstance(p, PulledModel) else PulledModel(name=p, tags=(p,)) for p in pulled),
        pulled_known=bool(pulled),
        loaded=tuple(LoadedModel(name=m, backend="llama.cpp") for m in loaded)
        + tuple(LoadedModel(name=m, backend="llama.cpp", loading=True) for m in loading),
        loaded_known=bool(loaded or loading),
        engines=engines or {},
    )


def states(*items: EndpointState) -> dict[str, EndpointState]:
    return {s.name: s for s in items}
