"""The config file: Pier's own layout, or Olla's (`discovery.static.endpoints`, `proxy.load_balancer`) unchanged.

`load_config()` returns a `PierConfig` whose endpoints are resolved against their profiles, so every
service reads the same effective paths, priorities, timeouts and limits.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shared.endpoints import EndpointConfig
from shared.errors import ConfigError
from shared.names import normalise_model
from shared.profiles import Profile, ProfileSet, load_profiles


class Balancer(StrEnum):
    PRIORITY = "priority"
    ROUND_ROBIN = "round-robin"
    LEAST_CONNECTIONS = "least-connections"


class RoutingStrategy(StrEnum):
    STRICT = "strict"
    OPTIMISTIC = "optimistic"


# Olla spells them with underscores and abbreviations; both spellings are accepted.
_BALANCER_SPELLINGS = {
    "priority": Balancer.PRIORITY,
    "round-robin": Balancer.ROUND_ROBIN,
    "round_robin": Balancer.ROUND_ROBIN,
    "roundrobin": Balancer.ROUND_ROBIN,
    "least-connections": Balancer.LEAST_CONNECTIONS,
    "least_connections": Balancer.LEAST_CONNECTIONS,
    "least-conn": Balancer.LEAST_CONNECTIONS,
    "least_conn": Balancer.LEAST_CONNECTIONS,
}


def parse_balancer(key: str, value: object) -> Balancer:
    balancer = _BALANCER_SPELLINGS.get(str(value).strip().lower())
    if balancer is None:
        raise ConfigError(key, value, "must be priority, round-robin or least-connections")
    return balancer


def parse_strategy(key: str, value: object) -> RoutingStrategy:
    try:
        return RoutingStrategy(str(value).strip().lower())
    except ValueError:
        raise ConfigError(key, value, "must be strict or optimistic") from None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint with its profile applied: what the services actually use."""

    name: str
    url: str
    type: str
    priority: int
    profile: Profile
    health_check_path: str
    model_path: str
    check_interval_s: float
    check_timeout_s: float
    headers: dict[str, str]
    max_concurrent_requests: int
    request_timeout_s: float
    response_header_timeout_s: float
    connect_timeout_s: float
    config: EndpointConfig
    source: str = "static"

    def allows_model(self, name: str) -> bool:
        return self.config.model_filter.allows(name)


def resolve_endpoint(cfg: EndpointConfig, profiles: ProfileSet, key: str, source: str = "static") -> Endpoint:
    profile = profiles.get(cfg.type)
    if profile is None:
        raise ConfigError(f"{key}.type", cfg.type, f"unknown endpoint type (known: {', '.join(profiles.names())})")
    limit = cfg.max_concurrent_requests
    return Endpoint(
        name=cfg.name,
        url=cfg.url,
        type=profile.name,
        priority=cfg.priority if cfg.priority is not None else profile.default_priority,
        profile=profile,
        health_check_path=cfg.health_check_url or profile.health_check_path,
        model_path=cfg.model_url or profile.model_path,
        check_interval_s=cfg.check_interval,
        check_timeout_s=cfg.check_timeout,
        headers=cfg.request_headers(),
        max_concurrent_requests=limit if limit is not None else profile.concurrency.max_concurrent_requests,
        request_timeout_s=cfg.request_timeout or profile.timeouts.request,
        response_header_timeout_s=cfg.response_header_timeout or profile.timeouts.response_header,
        connect_timeout_s=profile.timeouts.connect,
        config=cfg,
        source=source,
    )


@dataclass(frozen=True, slots=True)
class PierConfig:
    """Everything the config file (and its env overrides) says, resolved."""

    endpoints: tuple[Endpoint, ...] = ()
    load_balancer: Balancer = Balancer.PRIORITY
    routing_strategy: RoutingStrategy = RoutingStrategy.STRICT
    # normalised alias -> real model names to try, in order (rewritten per endpoint).
    model_aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    profiles: ProfileSet = field(default_factory=load_profiles)
    source: str = "defaults"
    # Top-level keys of the file that neither Pier nor Olla knows: ignored, and logged at start.
    ignored_keys: tuple[str, ...] = ()

    def endpoint(self, name: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.name == name), None)


def read_config_file(path: Path) -> dict[str, Any]:
    key = "PIER_CONFIG_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, str(path), f"cannot read file: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(key, str(path), f"invalid YAML{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(key, str(path), "the file must be a YAML mapping")
    return data


def _endpoint_list(data: dict[str, Any]) -> tuple[str, list[Any]]:
    """Find the endpoint list in either layout; returns (key path as the user wrote it, list)."""
    if "endpoints" in data:
        return "endpoints", _as_list("endpoints", data["endpoints"])
    static = ((data.get("discovery") or {}).get("static") or {}) if isinstance(data.get("discovery"), dict) else {}
    if isinstance(static, dict) and "endpoints" in static:
        return "discovery.static.endpoints", _as_list("discovery.static.endpoints", static["endpoints"])
    return "endpoints", []


def _as_list(key: str, value: object) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(key, value, "must be a list of endpoints")
    return value


def _parse_endpoint(key: str, raw: object) -> EndpointConfig:
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "an endpoint must be a mapping")
    try:
        return EndpointConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{key}.{loc}" if loc else key
        value = err.get("input") if loc else raw.get("name", raw)
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(where, value, msg) from exc


def _aliases(value: object) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError("model_aliases", value, "must map an alias to a list of model names")
    out: dict[str, tuple[str, ...]] = {}
    for alias, targets in value.items():
        names = [targets] if isinstance(targets, str) else targets
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"model_aliases.{alias}", targets, "must be a model name or a list of them")
        out[normalise_model(str(alias))] = tuple(names)
    return out


# The top-level keys Pier reads, and the other sections of an Olla file (accepted, not used: Pier's settings
# for them are environment variables).
PIER_KEYS = ("endpoints", "load_balancer", "routing_strategy", "model_aliases", "warmup")
OLLA_KEYS = ("server", "proxy", "discovery", "model_registry", "logging", "engineering", "translators")


def _unknown_keys(data: dict[str, Any]) -> tuple[str, ...]:
    """Top-level keys nobody reads. One that looks like a misspelt known key is an error (a typo such as
    `endpoint:` would otherwise leave Pier silently without endpoints); others are returned, to be logged."""
    unknown: list[str] = []
    for key in data:
        name = str(key)
        if name in PIER_KEYS or name in OLLA_KEYS:
            continue
        close = difflib.get_close_matches(name, PIER_KEYS + OLLA_KEYS, n=1, cutoff=0.75)
        if close:
            raise ConfigError(name, data[key], f"unknown key; did you mean {close[0]!r}?")
        unknown.append(name)
    return tuple(unknown)


def build_config(
    data: dict[str, Any],
    profiles: ProfileSet,
    *,
    load_balancer: str | None = None,
    routing_strategy: str | None = None,
    source: str = "file",
) -> PierConfig:
    """Turn a parsed config mapping (either layout) into a resolved `PierConfig`; env overrides win."""
    ignored = _unknown_keys(data)
    list_key, raw_endpoints = _endpoint_list(data)
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_endpoints):
        key = f"{list_key}[{index}]"
        cfg = _parse_endpoint(key, raw)
        if cfg.name in seen:
            raise ConfigError(f"{key}.name", cfg.name, "duplicate endpoint name")
        seen.add(cfg.name)
        endpoints.append(resolve_endpoint(cfg, profiles, key))

    proxy_section = data.get("proxy")
    proxy: dict[str, Any] = proxy_section if isinstance(proxy_section, dict) else {}
    if load_balancer is not None:
        balancer = parse_balancer("PIER_LOAD_BALANCER", load_balancer)
    elif "load_balancer" in data:
        balancer = parse_balancer("load_balancer", data["load_balancer"])
    elif "load_balancer" in proxy:
        balancer = parse_balancer("proxy.load_balancer", proxy["load_balancer"])
    else:
        balancer = Balancer.PRIORITY

    registry = data.get("model_registry")
    olla_strategy = registry.get("routing_strategy") if isinstance(registry, dict) else None
    if routing_strategy is not None:
        strategy = parse_strategy("PIER_ROUTING_STRATEGY", routing_strategy)
    elif "routing_strategy" in data:
        strategy = parse_strategy("routing_strategy", data["routing_strategy"])
    elif isinstance(olla_strategy, dict) and "type" in olla_strategy:
        strategy = parse_strategy("model_registry.routing_strategy.type", olla_strategy["type"])
    else:
        strategy = RoutingStrategy.STRICT

    return PierConfig(
        endpoints=tuple(endpoints),
        load_balancer=balancer,
        routing_strategy=strategy,
        model_aliases=_aliases(data.get("model_aliases")),
        profiles=profiles,
        source=source,
        ignored_keys=ignored,
    )
