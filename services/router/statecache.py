"""The router's view of endpoint state: a snapshot from Redis, then the event stream tailed, applied in memory.

Requests never touch Redis: they read `StateCache.table`, an immutable `RoutingTable` swapped whole after
every change. One background loop (`run`) owns all reads: snapshot at start, blocking XREAD of
`keys.EVENTS`, a periodic resync (also the moment a state's TTL is due) that notices expired state, and
reconnection with jittered backoff after a Redis error, resuming from the last applied id (or re-snapshotting
when the stream no longer holds it, e.g. a restarted, empty Redis). While Redis is away the table keeps the
last snapshot: states are judged as of the last moment Redis could have told us otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.router.table import RoutingTable, build_table
from shared import keys, statestore
from shared.config import PierConfig
from shared.redisconn import RedisTarget
from shared.state import EndpointState, Event, EventKind, WarmState
from shared.tracecontext import current_traceparent

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
LOCAL_DOWN_S = 10.0  # how long a passive mark-down holds when the health worker says nothing newer
MAX_PENDING_SIGNALS = 32
EVENTS_PER_READ = 500
COMMAND_TIMEOUT_S = 10.0  # a Redis reply later than this (beyond a blocking read's own wait) is an outage


@dataclass(slots=True)
class CacheStats:
    """Counters for tests and the status routes."""

    snapshots: int = 0  # full or periodic reads of every state (ZRANGE + MGET)
    events_applied: int = 0
    reconnects: int = 0
    signals_sent: int = 0
    signals_dropped: int = 0


class StateCache:
    """Snapshot + tail of the event stream; keeps `table` current; never on the request path."""

    def __init__(
        self,
        config: PierConfig,
        redis_url: RedisTarget | str,
        *,
        redis: Redis | None = None,
        resync_interval_s: float = 5.0,
        block_ms: int = 1000,
        instance_id: str = "",
        local_down_s: float = LOCAL_DOWN_S,
        warm_across_tiers_s: float | None = None,
    ) -> None:
        self._config = config
        self._redis_url = redis_url
        self._redis = redis
        self._owns_redis = redis is None
        self._resync_interval_s = resync_interval_s
        self._block_ms = max(1, block_ms)
        self._instance_id = instance_id
        self._local_down_s = local_down_s
        # Two views of each state: as its writer wrote it (`_written`, ordered on that writer's own clock), and as
        # the router judges it (`_states`: its times moved onto the router's clock at arrival). Writers' clocks
        # may disagree; comparing one writer's time with another's, or with ours, would keep a stale state or
        # expire a fresh one (docs/state.md, "Clocks").
        self._written: dict[str, EndpointState] = {}
        self._states: dict[str, EndpointState] = {}
        # The warm-up worker's state per (endpoint, model): status routes, and load times for routing.
        self._warm: dict[tuple[str, str], WarmState] = {}
        self._warm_across_tiers_s = warm_across_tiers_s
        self._local_down: dict[str, tuple[float, float]] = {}  # name -> (marked at, until), wall clock
        self._last_id = "0-0"
        self._snapshotted = False
        self._connected = False
        self._as_of: float | None = None  # wall time states are judged at while disconnected
        self._next_resync = 0.0  # monotonic
        self._next_expiry: float | None = None  # wall time the soonest live state expires
        self._version = 0
        self._stop = asyncio.Event()
        self._subscribers: list[Callable[[RoutingTable], None]] = []
        self._signal_tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self.stats = CacheStats()
        self._table = build_table(config, {}, now=time.time(), version=0)

    # --- what the app reads -------------------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable:
        """The current table: always valid (built from the config alone before the first snapshot)."""
        return self._table

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def states(self) -> Mapping[str, EndpointState]:
        return MappingProxyType(self._states)

    @property
    def last_event_id(self) -> str:
        return self._last_id

    def subscribe(self, callback: Callable[[RoutingTable], None]) -> None:
        """Call `callback(table)` after each swap (from the cache's own task; keep it quick)."""
        self._subscribers.append(callback)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow Redis until `stop()`: snapshot, tail, resync, and reconnect with backoff after errors."""
        backoff_s = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                await self._follow()
            except (RedisError, OSError, ValidationError) as exc:
                # ValidationError: a state key that is not an EndpointState (a foreign writer); retried like an
                # outage, since the health worker rewrites every key within its TTL.
                if self._connected or self.stats.reconnects == 0:
                    log.warning("redis unavailable, routing on the last snapshot: %s", exc)
                if self._connected:
                    backoff_s = BACKOFF_MIN_S  # it worked until now: a new outage starts the backoff afresh
                self._disconnected()
                self.stats.reconnects += 1
                await self._pause(backoff_s * (0.5 + self._rng.random() / 2))
                backoff_s = min(backoff_s * 2, BACKOFF_MAX_S)
            else:
                backoff_s = BACKOFF_MIN_S

    async def run_once(self) -> None:
        """One full snapshot -> table (tests and start-up checks). Redis errors propagate."""
        await self._snapshot(self._client(), full=True)
        self._set_connected()

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        """Stop, cancel pending signals, and close the Redis client if the cache created it."""
        self.stop()
        tasks = list(self._signal_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_redis and self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def drain_signals(self) -> None:
        """Wait for the endpoint_down signals already handed to Redis (tests, graceful shutdown)."""
        while self._signal_tasks:
            await asyncio.gather(*list(self._signal_tasks), return_exceptions=True)

    # --- passive signals ----------------------------------------------------------------------------------------

    def mark_down(self, endpoint: str, reason: str) -> None:
        """Treat `endpoint` as OFFLINE now (a failed connection) and tell the health worker, in the background.

        Never blocks and never raises: the signal is dropped when Redis is away. Repeated marks while the
        endpoint is already down locally change nothing and send nothing.
        """
        now = time.time()
        current = self._local_down.get(endpoint)
        if current is not None and current[1] > now:
            return
        if endpoint not in self._table.targets:
            return
        self._local_down[endpoint] = (now, now + self._local_down_s)
        self._rebuild()
        self._send_signal(endpoint, reason)

    def _send_signal(self, endpoint: str, reason: str) -> None:
        if not self._connected or self._redis is None or len(self._signal_tasks) >= MAX_PENDING_SIGNALS:
            self.stats.signals_dropped += 1
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.stats.signals_dropped += 1
            return
        event = Event(
            kind=EventKind.ENDPOINT_DOWN,
            endpoint=endpoint,
            detail={"reason": reason, "router": self._instance_id},
            traceparent=current_traceparent(),
            writer=self._instance_id,
        )
        task = loop.create_task(self._publish_signal(self._redis, event))
        self._signal_tasks.add(task)
        task.add_done_callback(self._signal_tasks.discard)

    async def _publish_signal(self, redis: Redis, event: Event) -> None:
        try:
            await statestore.publish(redis, event, stream=keys.SIGNALS)
        except (RedisError, OSError) as exc:
            self.stats.signals_dropped += 1
            log.info("endpoint_down signal for %s dropped: %s", event.endpoint, exc)
        else:
            self.stats.signals_sent += 1

    # --- the loop -----------------------------------------------------------------------------------------------

    def _client(self) -> Redis:
        if self._redis is None:
            client = statestore.connect(self._redis_url)
            # This loop owns retrying (with backoff and a re-snapshot); the client's own retries would only
            # hide an outage for seconds.
            client.set_retry(Retry(NoBackoff(), 0))
            self._redis = client
        return self._redis

    async def _follow(self) -> None:
        redis = self._client()
        # Every (re)connect reads all states (an outage may have hidden expiries), but keeps the tail position
        # unless the stream no longer holds it: events written while we were away are then still applied.
        trimmed = self._snapshotted and await asyncio.wait_for(
            statestore.trimmed_past(redis, self._last_id), timeout=COMMAND_TIMEOUT_S
        )
        self._set_connected()
        await self._snapshot(redis, full=not self._snapshotted or trimmed)
        while not self._stop.is_set():
            self._expire_local_down()
            resync_in_s = self._due_in_s()
            if resync_in_s <= 0:
                await self._snapshot(redis, full=False)
                continue
            wake_in_s = min(resync_in_s, self._local_down_ends_in_s())
            entries = await self._read_events(redis, block_ms=max(1, min(self._block_ms, int(wake_in_s * 1000))))
            if entries:
                self._apply(entries)

    def _due_in_s(self) -> float:
        """Seconds until the next resync: the interval, or sooner when a live state's TTL runs out."""
        due = self._next_resync - time.monotonic()
        if self._next_expiry is not None:
            due = min(due, self._next_expiry - time.time())
        return due

    def _local_down_ends_in_s(self) -> float:
        now = time.time()
        return min((until - now for _, until in self._local_down.values()), default=math.inf)

    async def _pause(self, delay_s: float) -> None:
        """Sleep for the backoff, waking early on stop; local mark-downs still end on time meanwhile."""
        deadline = time.monotonic() + delay_s
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = min(remaining, max(0.0, self._local_down_ends_in_s()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=step)
            self._expire_local_down()

    async def _read_events(self, redis: Redis, *, block_ms: int) -> list[tuple[str, Event | None]]:
        """Entries after the last applied id; a malformed entry is returned as None (skipped, never fatal)."""
        # The socket has no read timeout (the blocking read is the timeout): guard against a silent dead peer.
        reply: Any = await asyncio.wait_for(
            redis.xread({keys.EVENTS: self._last_id}, count=EVENTS_PER_READ, block=block_ms),
            timeout=block_ms / 1000 + COMMAND_TIMEOUT_S,
        )
        out: list[tuple[str, Event | None]] = []
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                raw = fields.get("event", fields.get(b"event"))
                try:
                    event: Event | None = Event.model_validate_json(raw) if raw is not None else None
                except ValidationError:
                    log.warning("skipping malformed event %s", entry_id)
                    event = None
                out.append((entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), event))
        return out

    async def _snapshot(self, redis: Redis, *, full: bool) -> None:
        """Read every state. `full` also moves the tail position (start, or the stream lost our id)."""
        snapshot = await asyncio.wait_for(statestore.read_snapshot(redis), timeout=COMMAND_TIMEOUT_S)
        warm = await asyncio.wait_for(statestore.read_warm_states(redis), timeout=COMMAND_TIMEOUT_S)
        self._warm = {(w.endpoint, w.model): w for w in warm}
        now = time.time()
        for fresh in snapshot.endpoints.values():
            self._arrive(fresh, now)
        for name in list(self._states):
            old = self._states[name]
            if name in snapshot.endpoints:
                continue
            if name in snapshot.expired:
                # Indexed but expired: Redis's TTL (one clock, the server's) is the authority. Keep the last
                # state, shown as unknown.
                self._states[name] = old.model_copy(update={"checked_at": min(old.checked_at, now - old.ttl_s - 1)})
            elif old.expired(now):
                # Not indexed: kept until its own TTL ends (a restarted, empty Redis must not blank the table);
                # ENDPOINT_REMOVED drops it at once.
                del self._states[name]
                self._written.pop(name, None)
        if full:
            self._last_id = snapshot.last_event_id
            self._snapshotted = True
        self._next_resync = time.monotonic() + self._resync_interval_s
        self.stats.snapshots += 1
        self._clear_answered_marks()
        self._rebuild()

    def _apply(self, entries: list[tuple[str, Event | None]]) -> None:
        """Apply a batch of events in memory (each carries the whole new state) and rebuild once."""
        changed = False
        for entry_id, event in entries:
            self._last_id = entry_id
            if event is None:
                continue
            self.stats.events_applied += 1
            if event.kind is EventKind.ENDPOINT_REMOVED:
                changed |= self._states.pop(event.endpoint, None) is not None
                self._written.pop(event.endpoint, None)
                self._local_down.pop(event.endpoint, None)
            elif event.kind is EventKind.WARM_CHANGED and event.warm is not None:
                self._warm[(event.warm.endpoint, event.warm.model)] = event.warm
                changed = True
            elif event.state is not None:
                changed |= self._arrive(event.state, time.time())
        if changed:
            self._clear_answered_marks()
            self._rebuild()

    def _arrive(self, fresh: EndpointState, now: float) -> bool:
        """Take a state read from Redis if it is later than the one held; True when it replaced it."""
        if not _later(self._written.get(fresh.name), fresh):
            return False
        self._written[fresh.name] = fresh
        self._states[fresh.name] = _on_our_clock(fresh, now)
        return True

    # --- table --------------------------------------------------------------------------------------------------

    def _set_connected(self) -> None:
        if not self._connected and self.stats.reconnects:
            log.info("redis reconnected; routing table at version %d", self._version)
        self._connected = True
        self._as_of = None

    def _disconnected(self) -> None:
        if self._connected:
            self._as_of = time.time()
        self._connected = False

    def _clear_answered_marks(self) -> None:
        """A state checked after our mark-down is the health worker's answer: it wins."""
        for name, (marked_at, _until) in list(self._local_down.items()):
            state = self._states.get(name)
            if state is not None and state.checked_at > marked_at:
                del self._local_down[name]

    def _expire_local_down(self) -> None:
        now = time.time()
        ended = [name for name, (_at, until) in self._local_down.items() if until <= now]
        for name in ended:
            del self._local_down[name]
        if ended:
            self._rebuild()

    def _rebuild(self) -> None:
        now = time.time()
        judged_at = self._as_of if self._as_of is not None else now
        self._version += 1
        # The marks are judged on the real clock (they end on time even while Redis is away).
        down = {name: math.inf for name, (_at, until) in self._local_down.items() if until > now}
        self._table = build_table(
            self._config,
            self._states,
            now=judged_at,
            local_down=down,
            version=self._version,
            previous=self._table,
            warm=self._warm,
            warm_across_tiers_s=self._warm_across_tiers_s,
        )
        expiries = [s.checked_at + s.ttl_s for s in self._states.values() if not s.expired(judged_at)]
        self._next_expiry = min(expiries) if expiries and self._as_of is None else None
        for callback in self._subscribers:
            try:
                callback(self._table)
            except Exception:  # a subscriber's bug must not stop the state loop
                log.exception("routing table subscriber failed")


def _later(current: EndpointState | None, fresh: EndpointState) -> bool:
    """Is `fresh` a later write than `current` (both as their writers wrote them)?

    One writer's times are on one clock: they order its writes (a replayed event may be older than the
    snapshot). Two writers' times are on two clocks that may be seconds apart: there, arrival decides, the
    state read last being the one written last. The same write read twice (an event, then a snapshot) is
    not a later one: it keeps its arrival time.
    """
    if current is None:
        return True
    if fresh.writer == current.writer:
        return fresh.checked_at > current.checked_at
    return True


def _on_our_clock(state: EndpointState, now: float) -> EndpointState:
    """The state with its writer's times moved onto the router's clock: checked when it arrived."""
    shift = now - state.checked_at
    if shift == 0:
        return state
    moved: dict[str, float] = {"checked_at": now}
    for name in ("last_success_at", "next_check_at", "retry_after_until"):
        value = getattr(state, name)
        if value is not None:
            moved[name] = value + shift
    return state.model_copy(update=moved)
