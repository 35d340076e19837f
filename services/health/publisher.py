"""Writing endpoint state to Redis and publishing one event per real change (`shared.statestore`).

The publisher remembers the last state it wrote per endpoint; a new leader starts from what is in Redis,
so a failover does not announce every endpoint again.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError

from services.health.batch import WriteBatcher
from services.health.changes import changes
from shared import statestore
from shared.state import EndpointState, Event, EventKind
from shared.statestore import RedisClient
from shared.tracecontext import current_traceparent

log = logging.getLogger(__name__)


class Publisher:
    """Owns the health worker's writes to the state contract."""

    def __init__(self, redis: RedisClient, *, writer: str) -> None:
        self._redis = redis
        self._writer = writer
        self._batcher = WriteBatcher(redis)
        self._last: dict[str, EndpointState] = {}
        self._stale: set[str] = set()  # indexed names whose state key had expired when the baseline was read

    def last(self, name: str) -> EndpointState | None:
        """The last state written (or found in Redis at baseline) for this endpoint."""
        return self._last.get(name)

    def known_names(self) -> set[str]:
        return set(self._last) | self._stale

    async def load_baseline(self) -> None:
        """Start from what Redis holds: events then describe changes against it, not against nothing."""
        snapshot = await statestore.read_snapshot(self._redis)
        self._last = dict(snapshot.endpoints)
        self._stale = set(snapshot.expired)

    def would_announce(self, state: EndpointState) -> bool:
        """Would publishing `state` announce a change (so the probe deserves a span)?"""
        return bool(changes(self._last.get(state.name), state))

    async def publish(self, state: EndpointState) -> list[Event]:
        """Write `state` (with its TTL) and publish an event for each real change. Returns the events.

        A Redis error propagates and leaves the remembered state unchanged, so the change is announced
        by the next successful write.
        """
        kinds = changes(self._last.get(state.name), state)
        traceparent = current_traceparent() if kinds else None
        events = [
            Event(
                kind=kind,
                endpoint=state.name,
                at=state.checked_at,
                state=state,
                detail=detail,
                traceparent=traceparent,
                writer=self._writer,
            )
            for kind, detail in kinds
        ]
        # The state and its events go out together, the events after the state, in a batched round trip.
        await self._batcher.write(state, events)
        self._last[state.name] = state
        self._stale.discard(state.name)
        return events

    async def remove(self, name: str, *, reason: str) -> Event | None:
        """Delete an endpoint's state and announce it. None when there was nothing to remove."""
        if name not in self._last and name not in self._stale:
            return None
        await self._batcher.drain()  # no queued write of this endpoint may land after the delete
        await statestore.remove_endpoint_state(self._redis, name)
        event = Event(
            kind=EventKind.ENDPOINT_REMOVED,
            endpoint=name,
            detail={"reason": reason},
            traceparent=current_traceparent(),
            writer=self._writer,
        )
        await statestore.publish(self._redis, event)
        self._last.pop(name, None)
        self._stale.discard(name)
        return event

    async def close(self) -> None:
        """Drop writes still queued (shutdown)."""
        await self._batcher.close()

    async def prune(self, keep: set[str]) -> list[str]:
        """Remove every endpoint Redis knows that is not in `keep` (config changed while no leader ran)."""
        removed: list[str] = []
        for name in sorted(self.known_names() - keep):
            try:
                if await self.remove(name, reason="no longer configured") is not None:
                    removed.append(name)
            except RedisError as exc:
                log.warning("could not remove state of %s: %s", name, exc)
        return removed
