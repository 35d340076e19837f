"""`routing.select` with a memo in front, for the request path.

`select` stays the single source of truth. Most requests ask the same few questions (same model, same
table, nothing blocked, endpoints with room), and when the answer did not depend on the balancer's rotation,
randomness or in-flight counts (`Decision.stable`), the same `Decision` object — candidates, reason string
and all — is handed out again instead of being rebuilt. The memo belongs to one table: a new table (any state
change, a local mark-down) empties it.
"""

from __future__ import annotations

from services.router.circuit import Circuits
from services.router.routing import Decision, RouteRequest, select
from services.router.runtime import Runtime
from services.router.table import RoutingTable
from shared.config import PierConfig

MAX_ENTRIES = 1024  # client-chosen model names are unbounded; the memo is not

# A memoised decision and its candidates that have a concurrency limit: (name, max_concurrent).
_Entry = tuple[Decision, tuple[tuple[str, int], ...]]


class Decisions:
    """Routing decisions for one router process (single event loop: no locks)."""

    def __init__(self, config: PierConfig, runtime: Runtime, circuits: Circuits) -> None:
        self._balancer = config.load_balancer
        self._strategy = config.routing_strategy
        self._runtime = runtime
        self._circuits = circuits
        self._table: RoutingTable | None = None
        self._memo: dict[tuple[str | None, str | None, bool], _Entry] = {}

    def decide(self, table: RoutingTable, model: str | None, engine: str | None, anthropic: bool) -> Decision:
        """Where a request may go now: `select(...)`, or the same answer it gave before when that still holds."""
        runtime = self._runtime
        rotation = runtime.next_rotation()  # advances on every request, as it would without the memo
        blocked = self._circuits.blocked()
        if table is not self._table:
            self._table = table
            self._memo.clear()
        key = (model, engine, anthropic)
        if not blocked:
            entry = self._memo.get(key)
            if entry is not None:
                decision, limited = entry
                if not limited:
                    return decision
                inflight = runtime.inflight
                if all(inflight[name] < most for name, most in limited):
                    return decision
        decision = select(
            table,
            RouteRequest(model, engine, anthropic),
            balancer=self._balancer,
            strategy=self._strategy,
            inflight=runtime.inflight,
            blocked=blocked,
            rotation=rotation,
            rng=runtime.rng,
        )
        if decision.stable:
            if len(self._memo) >= MAX_ENTRIES:
                self._memo.clear()
            limited = tuple(
                (c.target.name, c.target.max_concurrent) for c in decision.candidates if c.target.max_concurrent > 0
            )
            self._memo[key] = (decision, limited)
        return decision
