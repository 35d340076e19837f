"""Batched state writes against a real Redis: coalesced, ordered, and failing loudly when Redis is gone."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.health.batch import WriteBatcher
from shared import keys, statestore
from shared.state import EndpointState, EndpointStatus, Event, EventKind
from tests.harness import RedisServer, wait_for


def state(name: str) -> EndpointState:
    return EndpointState(
        name=name, url="http://127.0.0.1:1", type="docker-model-runner", priority=1, status=EndpointStatus.HEALTHY
    )


async def test_concurrent_writes_land_with_their_events(redis: Redis) -> None:
    batcher = WriteBatcher(redis, window_s=0.05)
    names = [f"e{i:02d}" for i in range(40)]
    writes = [
        batcher.write(state(n), [Event(kind=EventKind.ENDPOINT_ADDED, endpoint=n, state=state(n))] if i % 2 else [])
        for i, n in enumerate(names)
    ]
    await asyncio.gather(*writes)
    # Returned only once written: everything is readable now.
    snapshot = await statestore.read_snapshot(redis)
    assert sorted(snapshot.endpoints) == names
    ttl_ms = await redis.pttl(keys.endpoint_state("e00"))
    assert 0 < ttl_ms <= 15_000
    events = await statestore.read_events(redis, "0-0")
    assert [e.endpoint for _, e in events] == names[1::2]


async def test_drain_writes_what_is_queued(redis: Redis) -> None:
    batcher = WriteBatcher(redis, window_s=60.0)  # would wait a minute without drain()
    pending = asyncio.create_task(batcher.write(state("late"), []))
    await wait_for(lambda: batcher.queued == 1, what="the write queued")
    await batcher.drain()
    await asyncio.wait_for(pending, timeout=5)
    assert await redis.exists(keys.endpoint_state("late")) == 1


async def test_a_redis_outage_fails_every_write_in_the_batch(own_redis: RedisServer) -> None:
    client: Redis = statestore.connect(own_redis.url, timeout_s=1.0)
    try:
        batcher = WriteBatcher(client, window_s=0.01)
        await batcher.write(state("up"), [])
        own_redis.stop()
        results = await asyncio.wait_for(
            asyncio.gather(batcher.write(state("a"), []), batcher.write(state("b"), []), return_exceptions=True),
            timeout=10,
        )
        assert all(isinstance(r, RedisError | OSError) for r in results), results
    finally:
        await client.aclose()


async def test_close_cancels_queued_writes(redis: Redis) -> None:
    batcher = WriteBatcher(redis, window_s=60.0)
    pending = asyncio.create_task(batcher.write(state("never"), []))
    await wait_for(lambda: batcher.queued == 1, what="the write queued")
    await batcher.close()
    with pytest.raises(asyncio.CancelledError):
        await pending
    assert await redis.exists(keys.endpoint_state("never")) == 0
