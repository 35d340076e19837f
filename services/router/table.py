"""The routing table: every endpoint as the router sees it now, with per-model tier lists precomputed.

`build_table` is pure (no I/O). It runs on every state change, off the request path, so `routing.select`
only walks short precomputed tuples: no per-request sorting, no per-request name normalisation of targets.
A table is never mutated; the state cache swaps a new one in whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from shared.config import Endpoint, PierConfig
from shared.endpoints import ModelFilter
from shared.names import normalise_model
from shared.profiles import Profile
from shared.state import EndpointState, EndpointStatus, WarmState

_EMPTY_HEADERS: Mapping[str, str] = MappingProxyType({})
_NO_FILTER = ModelFilter()
_DEFAULT_CHECK_INTERVAL_S = 5.0  # a discovered endpoint's (the health worker's default interval)


@dataclass(frozen=True, slots=True)
class Target:
    """One endpoint as the router sees it right now."""

    name: str
    url: str  # base URL, no trailing slash
    type: str  # profile name, e.g. "docker-model-runner"
    priority: int
    status: EndpointStatus  # UNKNOWN when its state is missing or expired
    known: bool  # False: state missing/expired -> used only when nothing known is routable
    source: str  # static | docker | auto
    models: frozenset[str]  # normalised names it can serve (listed | pulled | loaded), model_filter applied
    models_known: bool  # a listing (or the pulled inventory) ever succeeded
    loaded: frozenset[str]  # loaded now (not loading)
    engines: Mapping[str, str] | None  # /engines/status (None: unknown)
    api_prefix: str  # "/engines/v1" for DMR, "/v1" for openai-compatible/ollama
    engine_paths: bool  # /engines/{engine}/v1/... exists
    anthropic_native: bool
    anthropic_messages_path: str
    headers: Mapping[str, str]  # configured headers + auth, added to every upstream request
    max_concurrent: int  # 0 = unlimited (profile or endpoint override)
    connect_timeout_s: float
    response_header_timeout_s: float
    request_timeout_s: float
    state: EndpointState | None
    # Additions beyond the interface (all defaulted so positional construction stays as specified).
    model_filter: ModelFilter = field(default_factory=ModelFilter)
    check_interval_s: float = _DEFAULT_CHECK_INTERVAL_S
    anthropic_count_tokens_path: str = "/anthropic/v1/messages/count_tokens"
    local_down: bool = False  # the router marked it down itself (a failed connection), until the next report

    @property
    def routable(self) -> bool:
        return self.known and self.status.routable

    @property
    def lazy_listing(self) -> bool:
        """Its listing says nothing useful (never succeeded, or empty): it may still load a model on demand."""
        return not self.models_known or not self.models


@dataclass(frozen=True, slots=True)
class Candidate:
    """A target chosen for one request (defined here so routes can memoise them; `routing` re-exports it)."""

    target: Target
    upstream_model: str | None  # body `model` rewritten for this endpoint (alias), None = send unchanged
    unknown: bool = False  # chosen from unknown state (last resort)
    blocked: bool = False  # circuit open / marked down, chosen because nothing else was left
    full: bool = False  # at its concurrency limit when chosen


@dataclass(frozen=True, slots=True)
class Tier:
    """Targets of one priority and one health class (healthy or busy), sorted by name for stable rotation.

    In a model's route a priority is split in two tiers: the targets where the model is loaded (or where the
    loaded set is unknown) first, then those where it is known to be cold, so a request goes cold only when
    no warm target of its priority has room.
    """

    priority: int
    busy: bool
    targets: tuple[Target, ...]
    mixed_native: bool = False  # some targets have the native Anthropic route and some don't
    cold: bool = False  # the model is known not to be loaded on these targets (a request waits for a load)


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """Everything `select` needs for one requested name (a normalised model or an alias)."""

    known: tuple[Tier, ...]  # known routable targets serving it: healthy tiers (priority desc), then busy ones
    unknown: tuple[Tier, ...]  # state missing/expired, last listing had it: the last resort
    exists: bool  # some target (any status) lists it: the model is "known" for strict routing
    upstream: Mapping[str, str]  # alias only: target name -> the real name to send that target
    rewrite_to: str | None = None  # alias only: the name to send an endpoint that lists none of the real names
    members: tuple[Target, ...] = ()  # every target serving it, any status, priority desc
    # Candidates built so far, by (target, unknown, blocked, full): memoised because building a frozen
    # dataclass costs more than the rest of a routing decision. Filling it changes no observable value.
    memo: dict[tuple[str, bool, bool, bool], Candidate] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Fallback:
    """Tiers for models no routable endpoint lists (optimistic routing, or before any listing succeeded)."""

    lazy: tuple[Tier, ...] = ()  # known routable, listing unknown or empty (a DMR may list lazily)
    rest: tuple[Tier, ...] = ()  # known routable, listing known and non-empty
    unknown: tuple[Tier, ...] = ()  # state missing/expired and listing never known


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """Swapped whole on every state change; never mutated."""

    targets: Mapping[str, Target]  # by endpoint name
    by_model: Mapping[str, tuple[Target, ...]]  # normalised model -> targets serving it, priority desc
    config: PierConfig
    version: int  # increments on every rebuild
    built_at: float
    # Additions beyond the interface: the precomputed routes.
    routes: Mapping[str, ModelRoute] = field(default_factory=dict)  # normalised model or alias -> route
    fallback: Fallback = field(default_factory=Fallback)
    listing_known: bool = False  # some target's listing ever succeeded (strict 404s need one)
    model_names: tuple[str, ...] = ()  # sorted all_models(), for 404 bodies
    # The warm-up worker's state per (endpoint, model): the status routes show it; measured load times
    # decide whether a warm endpoint of a lower priority beats a cold one (`warm_across_tiers_s`).
    warm: Mapping[tuple[str, str], WarmState] = field(default_factory=dict)

    def all_models(self) -> frozenset[str]:
        return frozenset(self.by_model)

    def ordered_targets(self) -> tuple[Target, ...]:
        """Every target, priority desc then name (for status and listings)."""
        return tuple(sorted(self.targets.values(), key=_rank))


def _rank(target: Target) -> tuple[int, str]:
    return (-target.priority, target.name)


def _status(
    state: EndpointState | None, name: str, now: float, local_down: Mapping[str, float]
) -> tuple[EndpointStatus, bool, bool]:
    """(status, known, locally down) for one endpoint."""
    until = local_down.get(name)
    if until is not None and now < until:
        return EndpointStatus.OFFLINE, True, True
    if state is None or state.expired(now):
        return EndpointStatus.UNKNOWN, False, False
    return state.status, True, False


def _models(state: EndpointState | None, model_filter: ModelFilter) -> tuple[frozenset[str], bool, frozenset[str]]:
    if state is None:
        return frozenset(), False, frozenset()
    names = frozenset(m for m in state.all_models() if m and model_filter.allows(m))
    loaded = frozenset(m for m in state.loaded_names() if m in names)
    return names, state.models_known or state.pulled_known, loaded


def _engines(state: EndpointState | None) -> Mapping[str, str] | None:
    if state is None or not state.engines:
        return None
    return MappingProxyType({k.lower(): v for k, v in state.engines.items()})


def _configured_target(
    endpoint: Endpoint, state: EndpointState | None, status: tuple[EndpointStatus, bool, bool]
) -> Target:
    return _target(
        state,
        status,
        endpoint.profile,
        name=endpoint.name,
        url=endpoint.url,
        type_=endpoint.type,
        priority=endpoint.priority,
        source=endpoint.source,
        model_filter=endpoint.config.model_filter,
        headers=MappingProxyType(dict(endpoint.headers)) if endpoint.headers else _EMPTY_HEADERS,
        max_concurrent=endpoint.max_concurrent_requests,
        timeouts_s=(endpoint.connect_timeout_s, endpoint.response_header_timeout_s, endpoint.request_timeout_s),
        check_interval_s=endpoint.check_interval_s,
    )


def _discovered_target(state: EndpointState, profile: Profile, status: tuple[EndpointStatus, bool, bool]) -> Target:
    """An endpoint the health worker found (Docker, auto-detect): no config entry, so its profile decides."""
    timeouts = profile.timeouts
    return _target(
        state,
        status,
        profile,
        name=state.name,
        url=state.url,
        type_=profile.name,
        priority=state.priority,
        source=state.source,
        model_filter=_NO_FILTER,
        headers=_EMPTY_HEADERS,
        max_concurrent=profile.concurrency.max_concurrent_requests,
        timeouts_s=(timeouts.connect, timeouts.response_header, timeouts.request),
        check_interval_s=_DEFAULT_CHECK_INTERVAL_S,
    )


def _target(
    state: EndpointState | None,
    status: tuple[EndpointStatus, bool, bool],
    profile: Profile,
    *,
    name: str,
    url: str,
    type_: str,
    priority: int,
    source: str,
    model_filter: ModelFilter,
    headers: Mapping[str, str],
    max_concurrent: int,
    timeouts_s: tuple[float, float, float],  # connect, response header, request
    check_interval_s: float,
) -> Target:
    """A target from what the endpoint's config entry (or, for a discovered one, its profile) says."""
    models, models_known, loaded = _models(state, model_filter)
    return Target(
        name=name,
        url=url.rstrip("/"),
        type=type_,
        priority=priority,
        status=status[0],
        known=status[1],
        source=source,
        models=models,
        models_known=models_known,
        loaded=loaded,
        engines=_engines(state),
        api_prefix=profile.api_prefix,
        engine_paths=profile.engine_paths,
        anthropic_native=profile.anthropic.native,
        anthropic_messages_path=profile.anthropic.messages_path,
        headers=headers,
        max_concurrent=max_concurrent,
        connect_timeout_s=timeouts_s[0],
        response_header_timeout_s=timeouts_s[1],
        request_timeout_s=timeouts_s[2],
        state=state,
        model_filter=model_filter,
        check_interval_s=check_interval_s,
        anthropic_count_tokens_path=profile.anthropic.count_tokens_path,
        local_down=status[2],
    )


def _reuse(previous: RoutingTable | None, config: PierConfig, name: str, state: EndpointState | None) -> Target | None:
    """The previous table's target when nothing it was built from changed (saves work on big tables)."""
    if previous is None or previous.config is not config:
        return None
    old = previous.targets.get(name)
    return old if old is not None and old.state is state else None


def _tiers(targets: Iterable[Target], cold: Callable[[Target], bool] | None = None) -> tuple[Tier, ...]:
    """Group known routable targets (already priority desc, name asc) into healthy tiers, then busy tiers.

    With `cold` (a model's route), each priority splits into its warm tier, then its cold tier.
    """
    healthy: list[Target] = []
    busy: list[Target] = []
    for target in targets:
        if target.routable:
            (busy if target.status is EndpointStatus.BUSY else healthy).append(target)
    return _group(healthy, busy=False, cold=cold) + _group(busy, busy=True, cold=cold)


def _unknown_tiers(targets: Iterable[Target]) -> tuple[Tier, ...]:
    return _group([t for t in targets if not t.known], busy=False)


def _group(targets: list[Target], *, busy: bool, cold: Callable[[Target], bool] | None = None) -> tuple[Tier, ...]:
    tiers: list[Tier] = []
    start = 0
    for index in range(1, len(targets) + 1):
        if index == len(targets) or targets[index].priority != targets[start].priority:
            members = tuple(targets[start:index])
            if cold is None:
                tiers.append(_tier(members, busy, cold=False))
            else:
                warm_part = tuple(t for t in members if not cold(t))
                cold_part = tuple(t for t in members if cold(t))
                tiers.extend(_tier(part, busy, cold=part is cold_part) for part in (warm_part, cold_part) if part)
            start = index
    return tuple(tiers)


def _tier(members: tuple[Target, ...], busy: bool, *, cold: bool) -> Tier:
    mixed = len({t.anthropic_native for t in members}) > 1
    return Tier(members[0].priority, busy, members, mixed_native=mixed, cold=cold)


def is_cold(target: Target, model: str) -> bool:
    """The model (normalised) is known not to be loaded on the target: a request there waits for a load."""
    state = target.state
    return state is not None and state.loaded_known and model not in target.loaded


def _warm_first(tiers: tuple[Tier, ...]) -> tuple[Tier, ...]:
    """Warm tiers of any priority before cold ones (a lower priority beats a cold load); busy tiers stay last."""
    return tuple(sorted(tiers, key=lambda t: (t.busy, t.cold)))  # stable: priority order kept within each


def _route(
    members: tuple[Target, ...],
    upstream: Mapping[str, str],
    rewrite_to: str | None = None,
    *,
    model: str | None = None,
    warm_across: bool = False,
) -> ModelRoute:
    """`model`: the normalised name the targets list (None for an alias: each target's upstream name)."""

    def cold(target: Target) -> bool:
        name = model if model is not None else normalise_model(upstream.get(target.name, rewrite_to or ""))
        return is_cold(target, name)

    known = _tiers(members, cold)
    return ModelRoute(
        known=_warm_first(known) if warm_across else known,
        unknown=_unknown_tiers(members),
        exists=bool(members),
        upstream=upstream,
        rewrite_to=rewrite_to,
        members=members,
    )


def build_table(
    config: PierConfig,
    states: Mapping[str, EndpointState],
    *,
    now: float | None = None,
    local_down: Mapping[str, float] | None = None,
    version: int = 0,
    previous: RoutingTable | None = None,
    warm: Mapping[tuple[str, str], WarmState] | None = None,
    warm_across_tiers_s: float | None = None,
) -> RoutingTable:
    """Build the table from the config and the endpoint states (pure).

    Configured endpoints come first; a state whose name is not in the config is a discovered endpoint and
    is resolved with its type's profile (skipped when the type is unknown). `local_down` maps endpoint names
    the router marked down itself to an until-time: OFFLINE before it (the state cache drops an entry as
    soon as the health worker reports the endpoint again). Expired states make a target UNKNOWN (known=False)
    but keep its last listing, so it can still be a last resort for the models it had.

    Inside a priority, targets where the model is loaded go first (`Tier.cold`). With `warm_across_tiers_s`,
    a model whose measured load time (the warm-up worker's, in `warm`) exceeds it goes to a warm target of
    any priority before a cold one.
    """
    now = time.time() if now is None else now
    down = local_down or {}
    targets: dict[str, Target] = {}
    for endpoint in config.endpoints:
        state = states.get(endpoint.name)
        status = _status(state, endpoint.name, now, down)
        old = _reuse(previous, config, endpoint.name, state)
        if old is not None and (old.status, old.known, old.local_down) == status:
            targets[endpoint.name] = old
        else:
            targets[endpoint.name] = _configured_target(endpoint, state, status)
    for name, state in states.items():
        if name in targets:
            continue
        profile = config.profiles.get(state.type)
        if profile is None:
            continue
        status = _status(state, name, now, down)
        old = _reuse(previous, config, name, state)
        if old is not None and (old.status, old.known, old.local_down) == status:
            targets[name] = old
        else:
            targets[name] = _discovered_target(state, profile, status)

    ordered = sorted(targets.values(), key=_rank)
    serving: dict[str, list[Target]] = {}
    for target in ordered:
        for model in target.models:
            serving.setdefault(model, []).append(target)
    by_model = {model: tuple(members) for model, members in serving.items()}
    warm_states = warm or {}
    slow = _slow_models(warm_states, warm_across_tiers_s)
    routes: dict[str, ModelRoute] = {
        model: _route(members, _EMPTY_HEADERS, model=model, warm_across=model in slow)
        for model, members in by_model.items()
    }
    for alias, real_names in config.model_aliases.items():
        across = any(normalise_model(real) in slow for real in real_names)
        routes[alias] = _alias_route(by_model, real_names, warm_across=across)

    live = [t for t in ordered if t.routable]
    return RoutingTable(
        targets=MappingProxyType(targets),
        by_model=MappingProxyType(by_model),
        config=config,
        version=version,
        built_at=now,
        routes=MappingProxyType(routes),
        fallback=Fallback(
            lazy=_tiers(t for t in live if t.lazy_listing),
            rest=_tiers(t for t in live if not t.lazy_listing),
            unknown=_unknown_tiers(t for t in ordered if not t.models_known),
        ),
        listing_known=any(t.models_known for t in ordered),
        model_names=tuple(sorted(by_model)),
        warm=MappingProxyType(dict(warm_states)),
    )


def _slow_models(warm: Mapping[tuple[str, str], WarmState], threshold_s: float | None) -> frozenset[str]:
    """Models whose longest measured load exceeds the threshold (None: the cross-tier preference is off)."""
    if threshold_s is None:
        return frozenset()
    return frozenset(
        model for (_, model), w in warm.items() if w.load_time_s is not None and w.load_time_s > threshold_s
    )


def _alias_route(
    by_model: Mapping[str, tuple[Target, ...]], real_names: tuple[str, ...], *, warm_across: bool = False
) -> ModelRoute:
    """Targets serving any of the alias's real names; each is sent the first real name it has."""
    upstream: dict[str, str] = {}
    members: list[Target] = []
    for real in real_names:
        for target in by_model.get(normalise_model(real), ()):
            if target.name not in upstream:
                upstream[target.name] = real
                members.append(target)
    members.sort(key=_rank)
    return _route(tuple(members), MappingProxyType(upstream), rewrite_to=real_names[0], warm_across=warm_across)
