"""The Redis state contract round-trips through a real redis-server: state, TTLs, events, snapshots."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from shared import keys, statestore
from shared.state import (
    EndpointState,
    EndpointStatus,
    Event,
    EventKind,
    LoadedModel,
    PulledModel,
    WarmPhase,
    WarmState,
)
from tests.harness import wait_for


def sample_state(name: str = "dmr-a", *, ttl_s: float = 30.0) -> EndpointState:
    return EndpointState(
        name=name,
        url="http://127.0.0.1:12434",
        type="docker-model-runner",
        priority=95,
        status=EndpointStatus.HEALTHY,
        latency_ms=3.5,
        models=("ai/smollm2:latest",),
        models_known=True,
        pulled=(PulledModel(name="ai/smollm2:latest", tags=("ai/smollm2:latest",), format="gguf"),),
        pulled_known=True,
        loaded=(LoadedModel(name="ai/smollm2:latest", backend="llama.cpp", loading=True, keep_alive="10m0s"),),
        loaded_known=True,
        engines={"llama.cpp": "Running: llama.cpp abc"},
        version="v1.2.6",
        ttl_s=ttl_s,
        writer="health-1",
    )


async def test_endpoint_state_round_trips_and_snapshot_reads_it(redis: Redis) -> None:
    state = sample_state()
    await statestore.write_endpoint_state(redis, state)
    snapshot = await statestore.read_snapshot(redis)
    assert snapshot.endpoints == {"dmr-a": state}
    assert snapshot.expired == set()
    assert snapshot.endpoints["dmr-a"].all_models() == {"ai/smollm2:latest"}
    assert snapshot.endpoints["dmr-a"].loaded_names() == frozenset()  # still loading
    ttl_ms = await redis.pttl(keys.endpoint_state("dmr-a"))
    assert 0 < ttl_ms <= 30_000


async def test_state_expires_when_its_writer_stops(redis: Redis) -> None:
    await statestore.write_endpoint_state(redis, sample_state("short", ttl_s=1.0))
    assert "short" in (await statestore.read_snapshot(redis)).endpoints

    async def expired() -> bool:
        return "short" in (await statestore.read_snapshot(redis)).expired

    await wait_for(expired, timeout_s=5, what="the state key to expire")


async def test_events_carry_state_and_traceparent_and_resume_from_an_id(redis: Redis) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    first = Event(kind=EventKind.STATUS_CHANGED, endpoint="dmr-a", state=sample_state(), traceparent=tp)
    first_id = await statestore.publish(redis, first)
    snapshot = await statestore.read_snapshot(redis)
    assert snapshot.last_event_id == first_id

    second = Event(kind=EventKind.MODELS_CHANGED, endpoint="dmr-a", detail={"added": ["ai/gemma3:latest"]})
    second_id = await statestore.publish(redis, second)
    events = await statestore.read_events(redis, snapshot.last_event_id)
    assert events == [(second_id, second)]
    raw: Any = await redis.xrange(keys.EVENTS)
    assert raw[0][1]["traceparent"] == tp
    assert raw[0][1]["kind"] == "status_changed"
    assert (await statestore.read_events(redis, "0-0"))[0] == (first_id, first)


async def test_blocking_read_returns_an_event_a_second_client_publishes(redis: Redis, redis_url: str) -> None:
    position = await statestore.last_id(redis)
    reader = asyncio.create_task(statestore.read_events(redis, position, block_ms=5000))
    writer = statestore.connect(redis_url)
    event = Event(kind=EventKind.LOADED_CHANGED, endpoint="dmr-b")
    try:
        await statestore.publish(writer, event)
    finally:
        await writer.aclose()
    events = await asyncio.wait_for(reader, timeout=10)
    assert [e for _, e in events] == [event]


async def test_trimmed_stream_is_detected(redis: Redis) -> None:
    ids = [await statestore.publish(redis, Event(kind=EventKind.STATUS_CHANGED, endpoint=f"e{i}")) for i in range(5)]
    assert not await statestore.trimmed_past(redis, ids[1])
    await redis.xtrim(keys.EVENTS, maxlen=2, approximate=False)
    assert await statestore.trimmed_past(redis, ids[1])
    assert not await statestore.trimmed_past(redis, ids[3])
    await redis.delete(keys.EVENTS)
    assert await statestore.trimmed_past(redis, ids[4])


async def test_warm_state_and_heartbeats(redis: Redis) -> None:
    warm = WarmState(endpoint="dmr-a", model="ai/smollm2:latest", phase=WarmPhase.WARM, load_time_s=1.5)
    await statestore.write_warm_state(redis, warm)
    assert await statestore.read_warm_states(redis) == [warm]

    assert await statestore.heartbeat_age_s(redis, "health", "h1") is None
    before = time.time()
    await statestore.beat(redis, "health", "h1", ttl_s=5)
    age = await statestore.heartbeat_age_s(redis, "health", "h1")
    assert age is not None
    assert 0.0 <= age <= time.time() - before + 0.01
    # A beat 30 s old reads as 30 s (a lower bound: an age that is always 0 fails here).
    await redis.set(keys.heartbeat("health", "h1"), f"{time.time() - 30:.3f}")
    old = await statestore.heartbeat_age_s(redis, "health", "h1")
    assert old is not None
    assert 29.9 <= old <= 31.0
