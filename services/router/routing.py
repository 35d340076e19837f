"""Which endpoints a request may go to, in the order to try them: a pure function of (table, request, numbers).

The order, from the precomputed tiers of `services.router.table`:
1. known routable targets that serve the model: healthy tiers (priority desc), then busy tiers; each priority
   is split into the targets where the model is loaded, then those where it is cold (`Tier.cold`; with
   PIER_ROUTE_WARM_ACROSS_TIERS a slow-loading model's warm tiers all go first); a decision whose first
   candidate is cold says `cold-start` in its reason (X-Pier-Route); inside a tier the balancer decides
   (priority: random, round-robin: `rotation`, least-connections: fewest in-flight,
   ties by `rotation`);
2. optimistic routing (or no listing ever succeeded): routable endpoints whose listing is unknown or empty
   (a DMR may list lazily), then any other routable endpoint; the model filter still applies;
3. targets whose state is missing or expired (`Candidate.unknown`), only when nothing known is routable;
4. blocked targets (circuit open, marked down) only when nothing else is left (`Candidate.blocked`).
Targets at their concurrency limit go after those with room; `all_full` says none has room.

`select` touches at most a few targets per tier for the common case (it stops once it has `limit` targets
with room), so its cost does not grow with the number of endpoints.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import StrEnum

from services.router.table import Candidate, ModelRoute, RoutingTable, Target, Tier, is_cold
from shared.config import Balancer, RoutingStrategy
from shared.names import normalise_model

DEFAULT_LIMIT = 8  # failover past this many endpoints only adds latency
DEFAULT_RETRY_AFTER_S = 5
MAX_RETRY_AFTER_S = 60


class RouteError(StrEnum):
    NO_MODEL = "no_model"  # 400: the request names no model
    UNKNOWN_MODEL = "unknown_model"  # 404 (strict): no endpoint has it
    NOT_ROUTABLE = "not_routable"  # 503 + Retry-After: known, but nowhere routable now
    ENGINE_UNAVAILABLE = "engine_unavailable"  # the explicit engine runs on none of the candidates


@dataclass(frozen=True, slots=True)
class RouteRequest:
    model: str | None  # as the client sent it
    engine: str | None = None  # from /engines/{engine}/v1/... paths
    anthropic_native: bool = False  # prefer endpoints with the native Anthropic route


@dataclass(frozen=True, slots=True)
class Decision:
    model: str | None  # normalised requested model
    candidates: tuple[Candidate, ...]  # in the order to try (failover walks this list)
    reason: str  # for X-Pier-Route, e.g. "priority;tier=95;candidates=2" or "optimistic;tier=95;candidates=1"
    error: RouteError | None = None
    available_models: tuple[str, ...] = ()  # for the 404 body
    retry_after_s: int | None = None  # for the 503
    all_full: bool = False  # every candidate is at its concurrency limit (the app may wait, then 503)
    # Neither `rotation`, `rng` nor `inflight` shaped it (every tier walked had one member, nothing was
    # blocked, every candidate had room): the same table and request give this same decision for as long as
    # nothing is blocked and every candidate with a concurrency limit still has room. A cache may reuse it.
    stable: bool = False


@dataclass(slots=True)
class _Walk:
    """One request's filters and the candidates collected so far.

    The walks never meet a target twice (known, fallback and unknown tiers are disjoint, and each later
    walk runs only when the earlier ones found nothing), so no "seen" set is needed.
    """

    balancer: Balancer
    inflight: Mapping[str, int]
    blocked: AbstractSet[str]
    rotation: int
    rng: random.Random
    limit: int
    engine: str | None
    prefer_native: bool
    allow_blocked: bool = False
    unknown: bool = False  # candidates collected now are from unknown state
    filter_model: str | None = None  # fallback walks: the model filter must allow this name
    route: ModelRoute | None = None  # the route whose upstream names (and memo) apply
    rewrite_to: str | None = None
    room: list[Candidate] = field(default_factory=list)
    full: list[Candidate] = field(default_factory=list)
    varied: bool = False  # a balancer choice (a tier of several targets) shaped the order

    def accepts(self, target: Target) -> bool:
        if not self.allow_blocked and target.name in self.blocked:
            return False
        if self.engine is not None and not _engine_ok(target, self.engine):
            return False
        return self.filter_model is None or target.model_filter.allows(self.filter_model)

    def has_room(self, target: Target) -> bool:
        return target.max_concurrent <= 0 or self.inflight.get(target.name, 0) < target.max_concurrent

    def add(self, target: Target, room: bool) -> None:
        blocked = self.allow_blocked and target.name in self.blocked
        route = self.route
        if route is not None and self.rewrite_to is None:
            key = (target.name, self.unknown, blocked, not room)
            candidate = route.memo.get(key)
            if candidate is None:
                candidate = route.memo[key] = self._candidate(target, room, blocked)
        else:
            candidate = self._candidate(target, room, blocked)
        (self.room if room else self.full).append(candidate)

    def _candidate(self, target: Target, room: bool, blocked: bool) -> Candidate:
        upstream = self.route.upstream.get(target.name, self.rewrite_to) if self.route is not None else None
        return Candidate(target, upstream or self.rewrite_to, self.unknown, blocked, not room)

    @property
    def done(self) -> bool:
        return len(self.room) >= self.limit

    @property
    def found(self) -> bool:
        return bool(self.room or self.full)


def _engine_ok(target: Target, engine: str) -> bool:
    """An explicit engine needs DMR's engine paths, and that engine running when /engines/status is known."""
    if not target.engine_paths:
        return False
    if target.engines is None:
        return True
    return target.engines.get(engine, "").strip().lower().startswith("running")


def _order_tier(tier: Tier, walk: _Walk, need: int) -> list[tuple[Target, bool]]:
    """The tier's acceptable targets in balancer order, each with "has room"; stops once `need` have room."""
    members = tier.targets
    count = len(members)
    if count > 1:
        walk.varied = True
    if walk.balancer is Balancer.LEAST_CONNECTIONS:
        return _least_connections(members, walk, need)
    if walk.balancer is Balancer.ROUND_ROBIN or count == 1:
        start = walk.rotation % count
    else:
        start = walk.rng.randrange(count)
        if not (walk.accepts(members[start]) and walk.has_room(members[start])):
            # Pick uniformly among the usable ones instead of sliding to the next (which would double its share).
            usable = [i for i, t in enumerate(members) if walk.accepts(t) and walk.has_room(t)]
            if usable:
                start = walk.rng.choice(usable)
    out: list[tuple[Target, bool]] = []
    with_room = 0
    for offset in range(count):
        target = members[(start + offset) % count]
        if walk.accepts(target):
            room = walk.has_room(target)
            out.append((target, room))
            if room:
                with_room += 1
                if with_room >= need:
                    break
    return out


def _least_connections(members: tuple[Target, ...], walk: _Walk, need: int) -> list[tuple[Target, bool]]:
    count = len(members)
    start = walk.rotation % count
    inflight = walk.inflight
    # Fast path: idle targets are the least loaded (and have room); `need` of them in rotation order settle it.
    idle: list[tuple[Target, bool]] = []
    for offset in range(count):
        target = members[(start + offset) % count]
        if inflight.get(target.name, 0) == 0 and walk.accepts(target):
            idle.append((target, True))
            if len(idle) >= need:
                return idle
    scored = [
        (inflight.get(target.name, 0), offset, target)
        for offset in range(count)
        if walk.accepts(target := members[(start + offset) % count])
    ]
    scored.sort(key=lambda item: (item[0], item[1]))
    return [(target, walk.has_room(target)) for _, _, target in scored]


def _walk_tiers(tiers: Sequence[Tier], walk: _Walk) -> None:
    for tier in tiers:
        if walk.done:
            return
        need = walk.limit - len(walk.room)
        mixed = walk.prefer_native and tier.mixed_native
        ordered = _order_tier(tier, walk, len(tier.targets) if mixed else need)
        if mixed:
            ordered = [o for o in ordered if o[0].anthropic_native] + [o for o in ordered if not o[0].anthropic_native]
        for target, room in ordered:
            walk.add(target, room)


def _plan(table: RoutingTable, route: ModelRoute | None, model: str, fallback: bool, walk: _Walk) -> str | None:
    """Collect candidates into `walk`; return the mode for the reason, or None when nothing was found."""
    # What an endpoint that lists none of the names is sent (aliases), and what its model filter must allow.
    rewrite_to = route.rewrite_to if route is not None else None
    fallback_name = normalise_model(rewrite_to) if rewrite_to else model
    walk.route = route
    if route is not None:
        _walk_tiers(route.known, walk)
        if walk.found:
            return walk.balancer.value
    if fallback:
        walk.rewrite_to, walk.filter_model = rewrite_to, fallback_name
        _walk_tiers(table.fallback.lazy, walk)
        _walk_tiers(table.fallback.rest, walk)
        if walk.found:
            return "optimistic"
    walk.unknown = True
    if route is not None:
        walk.rewrite_to, walk.filter_model = None, None
        _walk_tiers(route.unknown, walk)
    if fallback and not walk.found:
        walk.rewrite_to, walk.filter_model = rewrite_to, fallback_name
        _walk_tiers(table.fallback.unknown, walk)
    return "unknown-state" if walk.found else None


def _retry_after_s(table: RoutingTable, route: ModelRoute | None) -> int:
    """A hint for Retry-After: the next health check of an endpoint that could serve it."""
    targets = route.members if route is not None and route.members else tuple(table.targets.values())
    if not targets:
        return DEFAULT_RETRY_AFTER_S
    soonest = min(t.check_interval_s for t in targets)
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(soonest)))


def select(
    table: RoutingTable,
    request: RouteRequest,
    *,
    balancer: Balancer,
    strategy: RoutingStrategy,
    inflight: Mapping[str, int],
    blocked: AbstractSet[str],
    rotation: int,
    rng: random.Random,
    limit: int = DEFAULT_LIMIT,
) -> Decision:
    """Decide where a request may go (pure: no I/O, no clock). See the module docstring for the order."""
    model = normalise_model(request.model) if request.model else ""
    if not model:
        return Decision(model=None, candidates=(), reason="no-model", error=RouteError.NO_MODEL)
    route = table.routes.get(model)
    if route is not None and not route.exists and route.rewrite_to is None:
        route = None
    # Strict routing needs a listing to be strict about: before any listing succeeded, behave optimistically.
    fallback = strategy is RoutingStrategy.OPTIMISTIC or not table.listing_known
    engine = request.engine.strip().lower() if request.engine else None

    def attempt(allow_blocked: bool, engine: str | None) -> tuple[_Walk, str | None]:
        walk = _Walk(
            balancer=balancer,
            inflight=inflight,
            blocked=blocked,
            rotation=rotation,
            rng=rng,
            limit=max(1, limit),
            engine=engine,
            prefer_native=request.anthropic_native,
            allow_blocked=allow_blocked,
        )
        return walk, _plan(table, route, model, fallback, walk)

    walk, mode = attempt(False, engine)
    if mode is None and blocked:
        walk, mode = attempt(True, engine)
        mode = "blocked" if mode is not None else None
    if mode is not None:
        candidates = tuple(walk.room + walk.full)[: max(1, limit)]
        all_full = not walk.room
        reason = f"{mode};tier={candidates[0].target.priority};candidates={len(candidates)}"
        first = candidates[0]
        if is_cold(first.target, normalise_model(first.upstream_model) if first.upstream_model else model):
            reason += ";cold-start"  # the client waits for a load: no warm endpoint had room
        stable = not walk.varied and not blocked and not walk.full
        return Decision(model, candidates, reason + (";all-full" if all_full else ""), all_full=all_full, stable=stable)

    if engine is not None and attempt(True, None)[1] is not None:
        return Decision(
            model,
            (),
            f"engine-unavailable;engine={engine}",
            error=RouteError.ENGINE_UNAVAILABLE,
            retry_after_s=_retry_after_s(table, route),
        )
    known_model = route is not None and route.exists
    if not fallback and not known_model:
        return Decision(model, (), "unknown-model", error=RouteError.UNKNOWN_MODEL, available_models=table.model_names)
    return Decision(
        model, (), "not-routable", error=RouteError.NOT_ROUTABLE, retry_after_s=_retry_after_s(table, route)
    )
