"""StateCache against a real redis-server: snapshot, tail, resync, outages, restarts and passive mark-downs.

States and events are written with `shared.statestore`, exactly as the health worker writes them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from services.router.statecache import StateCache
from services.router.table import RoutingTable
from shared import keys, statestore
from shared.config import PierConfig
from shared.state import EndpointState, EndpointStatus, Event, EventKind
from tests.harness import RedisServer, wait_for
from tests.router.core_builders import config, endpoint

SMOL = "ai/smollm2:latest"
PHI = "ai/phi3:latest"
DEADLINE_S = 30.0


def live_state(name: str, **fields: Any) -> EndpointState:
    """A state checked now (the cache judges expiry on the real clock)."""
    base: dict[str, Any] = {
        "name": name,
        "url": f"http://{name}.test:12434",
        "type": "docker-model-runner",
        "priority": 95,
        "status": EndpointStatus.HEALTHY,
        "models": (SMOL,),
        "models_known": True,
        "checked_at": time.time(),
        "ttl_s": 60.0,
    }
    base.update(fields)
    return EndpointState(**base)


async def report(redis: Redis, state: EndpointState, kind: EventKind = EventKind.STATUS_CHANGED) -> str:
    """Write a state and announce it, as the health worker's publisher does."""
    await statestore.write_endpoint_state(redis, state)
    return await statestore.publish(redis, Event(kind=kind, endpoint=state.name, state=state, writer="test"))


@asynccontextmanager
async def running(cache: StateCache) -> AsyncIterator[StateCache]:
    task = asyncio.create_task(cache.run())
    try:
        yield cache
    finally:
        cache.stop()
        await asyncio.wait_for(task, timeout=DEADLINE_S)
        await cache.close()


def two_endpoints() -> PierConfig:
    return config(endpoint("a", 100), endpoint("b", 50))


async def test_before_any_snapshot_the_table_comes_from_the_config(redis_url: str) -> None:
    cache = StateCache(two_endpoints(), redis_url)
    table = cache.table
    assert set(table.targets) == {"a", "b"}
    assert all(not t.known for t in table.targets.values())
    assert not cache.connected
    await cache.close()


async def test_run_once_takes_a_snapshot(redis_url: str, redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, live_state("a"))
    await statestore.write_endpoint_state(redis, live_state("b", status=EndpointStatus.OFFLINE))
    cache = StateCache(two_endpoints(), redis_url, redis=redis)
    await cache.run_once()
    table = cache.table
    assert table.targets["a"].routable
    assert table.targets["b"].status is EndpointStatus.OFFLINE
    assert table.by_model[SMOL][0].name == "a"
    assert cache.connected
    assert cache.stats.snapshots == 1
    await cache.close()
    assert await redis.ping()  # a client it was given is not closed


async def test_snapshot_on_start_then_events_apply_without_a_redis_read(redis_url: str, redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, live_state("a"))
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    async with running(cache):
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
        snapshots = cache.stats.snapshots
        mget_before = await _calls(redis, "mget")
        version = cache.table.version

        b_state = live_state("b", models=(SMOL, PHI))
        await report(redis, b_state, EventKind.ENDPOINT_ADDED)
        await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="event applied")

        held = cache.table.targets["b"].state
        assert held is not None
        # As written, but checked when it arrived, on the router's clock (the writer's may differ).
        assert held.model_copy(update={"checked_at": b_state.checked_at}) == b_state
        assert held.checked_at >= b_state.checked_at
        assert cache.table.targets["b"].models == {SMOL, PHI}
        assert cache.table.version > version
        assert cache.stats.snapshots == snapshots  # no resync happened ...
        assert await _calls(redis, "mget") == mget_before  # ... and no state was read: the event carried it
        assert cache.stats.events_applied >= 1
        assert cache.last_event_id != "0-0"


async def test_a_replayed_older_event_does_not_overwrite_a_newer_state(redis_url: str, redis: Redis) -> None:
    old = live_state("a", status=EndpointStatus.OFFLINE, checked_at=time.time() - 5)
    new = live_state("a", status=EndpointStatus.HEALTHY)
    await statestore.publish(redis, Event(kind=EventKind.STATUS_CHANGED, endpoint="a", state=old))
    await statestore.write_endpoint_state(redis, new)
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    async with running(cache):
        # The snapshot reads the stream position first, so the old event is not replayed; publish one more
        # old event after the snapshot to make sure an out-of-date event is ignored when it is replayed.
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
        await statestore.publish(redis, Event(kind=EventKind.STATUS_CHANGED, endpoint="a", state=old))
        marker = live_state("b")
        await report(redis, marker)
        await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="later event")
        assert cache.table.targets["a"].status is EndpointStatus.HEALTHY


async def test_writers_with_skewed_clocks_are_ordered_by_arrival(redis_url: str, redis: Redis) -> None:
    """Writer A's clock is right; writer B's runs 60 s behind (its TTL is 15 s). B's later write wins and is live."""
    a_state = live_state("a", writer="health-a")
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    await report(redis, a_state)
    async with running(cache):
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="A's state")
        b_state = live_state(
            "a", writer="health-b", status=EndpointStatus.OFFLINE, checked_at=time.time() - 60, ttl_s=15.0
        )
        await report(redis, b_state)

        def follows_b() -> bool:
            target = cache.table.targets["a"]
            return target.known and target.status is EndpointStatus.OFFLINE

        await wait_for(follows_b, timeout_s=DEADLINE_S, what="B's state, though stamped 60 s earlier")
        # The same write read again (a resync) keeps its arrival time: it does not look fresher than it is.
        arrived = cache.states["a"].checked_at
        await cache.run_once()
        assert cache.states["a"].checked_at == arrived
        # One writer's own replayed, older write still loses to its later one (one clock orders it).
        replayed = b_state.model_copy(update={"checked_at": b_state.checked_at - 1, "status": EndpointStatus.HEALTHY})
        await report(redis, replayed)
        marker = live_state("b")
        await report(redis, marker)
        await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="later event")
        assert cache.table.targets["a"].status is EndpointStatus.OFFLINE


async def redis_gone(redis: Redis, key: str) -> bool:
    return await redis.get(key) is None


async def test_state_expiry_is_noticed_by_the_periodic_resync(redis_url: str, redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, live_state("a", ttl_s=1.0))
    await statestore.write_endpoint_state(redis, live_state("b"))
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=0.2, block_ms=100)
    async with running(cache):
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
        # No event is written: the health worker "died", its key's TTL runs out.
        await wait_for(lambda: not cache.table.targets["a"].known, timeout_s=DEADLINE_S, what="expiry")
        target = cache.table.targets["a"]
        assert target.status is EndpointStatus.UNKNOWN
        assert target.models == {SMOL}  # the last listing is kept: a last resort for that model
        # The key itself expires too (the cache may notice first: it reads the TTL from the state's own clock,
        # and Redis counts from the write, a moment later on a loaded machine).
        await wait_for(
            lambda: redis_gone(redis, keys.endpoint_state("a")), timeout_s=DEADLINE_S, what="the key to expire"
        )
        assert cache.table.targets["b"].routable


async def test_expiry_is_noticed_at_the_ttl_even_with_a_long_resync_interval(redis_url: str, redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, live_state("a", ttl_s=1.0))
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=1000)
    async with running(cache):
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
        await wait_for(lambda: not cache.table.targets["a"].known, timeout_s=DEADLINE_S, what="expiry")


async def test_removed_event_drops_a_discovered_endpoint(redis_url: str, redis: Redis) -> None:
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    async with running(cache):
        await wait_for(lambda: cache.connected, timeout_s=DEADLINE_S, what="connected")
        found = live_state("found", type="ollama", source="docker", models=(PHI,))
        await report(redis, found, EventKind.ENDPOINT_ADDED)
        await wait_for(lambda: "found" in cache.table.targets, timeout_s=DEADLINE_S, what="discovered endpoint")
        assert cache.table.targets["found"].api_prefix == "/v1"
        await statestore.remove_endpoint_state(redis, "found")
        await statestore.publish(redis, Event(kind=EventKind.ENDPOINT_REMOVED, endpoint="found"))
        await wait_for(lambda: "found" not in cache.table.targets, timeout_s=DEADLINE_S, what="removal")
        assert PHI not in cache.table.all_models()


async def test_a_malformed_event_is_skipped(redis_url: str, redis: Redis) -> None:
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    async with running(cache):
        # Connected is set as the first snapshot starts: wait for it to have been taken, too.
        await wait_for(lambda: cache.connected and cache.stats.snapshots, timeout_s=DEADLINE_S, what="connected")
        snapshots, reconnects, applied = cache.stats.snapshots, cache.stats.reconnects, cache.stats.events_applied
        await redis.xadd(keys.EVENTS, {"kind": "status_changed", "endpoint": "a", "event": "{not json"})
        await report(redis, live_state("a"))
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="valid event")
        assert cache.connected
        # Skipped in place: no reconnect and no fresh snapshot to get past it, and only the valid event applied.
        assert (cache.stats.snapshots, cache.stats.reconnects) == (snapshots, reconnects)
        assert cache.stats.events_applied == applied + 1


async def test_a_corrupt_state_key_is_retried_not_fatal(redis_url: str, redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, live_state("a"))
    await redis.set(keys.endpoint_state("b"), "not a state")
    await redis.zadd(keys.ENDPOINT_INDEX, {"b": time.time()})
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    async with running(cache):
        await wait_for(lambda: cache.stats.reconnects >= 1, timeout_s=DEADLINE_S, what="a failed snapshot")
        await report(redis, live_state("b"))  # the health worker rewrites the key
        await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="recovery")
        assert cache.table.targets["a"].routable
        assert cache.connected


async def test_subscribers_see_every_swap(redis_url: str, redis: Redis) -> None:
    seen: list[RoutingTable] = []
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200)
    cache.subscribe(seen.append)
    cache.subscribe(_broken_subscriber)  # must not stop the loop
    async with running(cache):
        await wait_for(lambda: cache.connected, timeout_s=DEADLINE_S, what="connected")
        await report(redis, live_state("a"))
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="event")
        assert seen[-1] is cache.table
        versions = [t.version for t in seen]
        assert versions == sorted(versions)
        assert len(set(versions)) == len(versions)


def _broken_subscriber(table: RoutingTable) -> None:
    raise RuntimeError("subscriber bug")


async def test_mark_down_swaps_at_once_and_signals_the_health_worker(redis_url: str, redis: Redis) -> None:
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=200, instance_id="router-1")
    await report(redis, live_state("a"))
    await report(redis, live_state("b"))
    async with running(cache):
        await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="snapshot")
        version = cache.table.version

        cache.mark_down("a", "connection refused")
        # Synchronous: the very next request already routes around it.
        target = cache.table.targets["a"]
        assert target.status is EndpointStatus.OFFLINE
        assert target.local_down
        assert cache.table.version == version + 1

        cache.mark_down("a", "connection refused")  # already down: no new table, no second signal
        assert cache.table.version == version + 1
        await cache.drain_signals()
        entries: Any = await redis.xrange(keys.SIGNALS)
        assert len(entries) == 1
        event = Event.model_validate_json(entries[0][1]["event"])
        assert event.kind is EventKind.ENDPOINT_DOWN
        assert event.endpoint == "a"
        assert event.detail["reason"] == "connection refused"
        assert event.writer == "router-1"
        assert cache.stats.signals_sent == 1

        # The health worker reports the endpoint again (checked after the mark): its word wins.
        await report(redis, live_state("a", models=(SMOL, PHI)))
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="health report")
        assert not cache.table.targets["a"].local_down


async def test_mark_down_ends_after_its_hold_without_a_report(redis_url: str, redis: Redis) -> None:
    cache = StateCache(two_endpoints(), redis_url, resync_interval_s=3600, block_ms=100, local_down_s=0.5)
    await report(redis, live_state("a"))
    async with running(cache):
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
        cache.mark_down("a", "reset")
        assert not cache.table.targets["a"].routable
        await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="hold to end")


async def test_mark_down_of_an_unknown_endpoint_is_ignored(redis_url: str) -> None:
    cache = StateCache(two_endpoints(), redis_url)
    version = cache.table.version
    cache.mark_down("nobody", "refused")
    assert cache.table.version == version
    await cache.close()


async def test_redis_stopped_keeps_the_last_snapshot_then_restarted_catches_up(own_redis: RedisServer) -> None:
    writer: Redis = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        await report(writer, live_state("a"))
        cache = StateCache(two_endpoints(), own_redis.url, resync_interval_s=0.5, block_ms=200)
        async with running(cache):
            await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
            snapshots_before = cache.stats.snapshots
            own_redis.stop()
            await wait_for(lambda: not cache.connected, timeout_s=DEADLINE_S, what="disconnect noticed")
            # Routing goes on with what it knew.
            assert cache.table.targets["a"].routable
            assert cache.table.targets["a"].models == {SMOL}
            # A mark-down still swaps the table; its signal is dropped (Redis is away), never raised.
            cache.mark_down("b", "refused")
            assert cache.table.targets["b"].local_down
            await cache.drain_signals()
            assert cache.stats.signals_dropped == 1

            own_redis.restart()  # a new, empty Redis on the same port: the stream lost our last id
            await writer.aclose()
            writer = Redis.from_url(own_redis.url, decode_responses=True)  # the old pool's sockets are dead
            await report(writer, live_state("b", models=(PHI,)))
            await wait_for(lambda: cache.connected, timeout_s=DEADLINE_S, what="reconnect")
            await wait_for(lambda: cache.table.targets["b"].routable, timeout_s=DEADLINE_S, what="catch up")
            assert cache.stats.snapshots > snapshots_before
            assert cache.stats.reconnects >= 1
            # The old state of `a` is kept until its own TTL (a restarted Redis must not blank the table).
            assert cache.table.targets["a"].routable
            # And the tail follows the new stream.
            await report(writer, live_state("a", status=EndpointStatus.BUSY))
            await wait_for(
                lambda: cache.table.targets["a"].status is EndpointStatus.BUSY,
                timeout_s=DEADLINE_S,
                what="event on the new stream",
            )
    finally:
        await writer.aclose()


async def test_reconnect_resumes_from_the_last_applied_id(own_redis: RedisServer) -> None:
    """Events written while the cache was cut off are applied one by one, not skipped by a new position."""
    admin: Redis = Redis.from_url(own_redis.url, decode_responses=True)
    await _command(admin, "ACL", "SETUSER", "writer", "on", ">writer-pw", "~*", "&*", "+@all")
    host_port = own_redis.url.removeprefix("redis://")
    writer: Redis = Redis.from_url(f"redis://writer:writer-pw@{host_port}", decode_responses=True)
    await admin.aclose()
    try:
        await report(writer, live_state("a"))
        cache = StateCache(two_endpoints(), own_redis.url, resync_interval_s=3600, block_ms=200)
        async with running(cache):
            await wait_for(lambda: cache.table.targets["a"].routable, timeout_s=DEADLINE_S, what="snapshot")
            applied = cache.stats.events_applied
            # Cut the cache off: its user can no longer log in, and its connections are dropped.
            await _command(writer, "ACL", "SETUSER", "default", "off")
            await _command(writer, "CLIENT", "KILL", "USER", "default")
            await wait_for(lambda: not cache.connected, timeout_s=DEADLINE_S, what="disconnect noticed")
            for step in range(3):
                await report(writer, live_state("a", models=(SMOL, f"ai/step{step}:latest")))
            assert not cache.connected
            assert "ai/step2:latest" not in cache.table.targets["a"].models
            await _command(writer, "ACL", "SETUSER", "default", "on")
            await wait_for(
                lambda: "ai/step2:latest" in cache.table.targets["a"].models,
                timeout_s=DEADLINE_S,
                what="catch-up",
            )
            await wait_for(lambda: cache.stats.events_applied == applied + 3, timeout_s=DEADLINE_S, what="3 events")
            assert cache.connected
    finally:
        await writer.aclose()


async def test_stop_ends_run_promptly_even_when_redis_is_down(own_redis: RedisServer) -> None:
    own_redis.stop()
    cache = StateCache(two_endpoints(), own_redis.url, block_ms=200)
    task = asyncio.create_task(cache.run())
    await wait_for(lambda: cache.stats.reconnects >= 2, timeout_s=DEADLINE_S, what="retrying with backoff")
    assert not cache.connected
    assert set(cache.table.targets) == {"a", "b"}
    cache.stop()
    await asyncio.wait_for(task, timeout=DEADLINE_S)
    await cache.close()


async def _calls(redis: Redis, command: str) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if entry else 0


async def _command(redis: Redis, *args: str) -> Any:
    return await redis.execute_command(*args)  # type: ignore[no-untyped-call]
