"""Reading and writing the state contract (`shared.keys` + `shared.state`) in a real Redis.

Writers (health, warm-up) write state whole with a TTL and publish an event per change. Readers (the
router) take a snapshot once, then tail the event stream from the snapshot's stream id; after a
disconnect they resume from the last id they applied, or re-snapshot when the stream was trimmed past it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys, redisconn
from shared.redisconn import RedisTarget
from shared.state import EndpointState, Event, WarmState

RedisClient: TypeAlias = "Redis"


def connect(target: RedisTarget | str, *, timeout_s: float = 5.0) -> RedisClient:
    """A client with explicit timeouts (`shared.redisconn`: URL or Sentinel, login, TLS); no I/O until first use."""
    # Blocking XREAD needs no socket timeout; commands set their own via block.
    return redisconn.connect(target, timeout_s=timeout_s, socket_timeout_s=None)


async def write_endpoint_state(redis: RedisClient, state: EndpointState) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        queue_endpoint_state(pipe, state)
        await pipe.execute()


def queue_endpoint_state(pipe: Pipeline, state: EndpointState) -> None:
    """Queue `write_endpoint_state`'s commands on a pipeline (a writer batching many endpoints per round trip)."""
    ttl_ms = max(1000, int(state.ttl_s * 1000))
    pipe.set(keys.endpoint_state(state.name), state.model_dump_json(), px=ttl_ms)
    pipe.zadd(keys.ENDPOINT_INDEX, {state.name: time.time()})


async def remove_endpoint_state(redis: RedisClient, name: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.endpoint_state(name))
        pipe.zrem(keys.ENDPOINT_INDEX, name)
        await pipe.execute()


async def write_warm_state(redis: RedisClient, warm: WarmState) -> None:
    ttl_ms = max(1000, int(warm.ttl_s * 1000))
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.warm_state(warm.endpoint, warm.model), warm.model_dump_json(), px=ttl_ms)
        pipe.zadd(keys.WARM_INDEX, {keys.warm_member(warm.endpoint, warm.model): time.time()})
        await pipe.execute()


def _event_fields(event: Event) -> dict[str, str]:
    fields: dict[str, str] = {"kind": event.kind.value, "endpoint": event.endpoint, "event": event.model_dump_json()}
    if event.traceparent:
        fields["traceparent"] = event.traceparent
    return fields


async def publish(redis: RedisClient, event: Event, *, stream: str = keys.EVENTS) -> str:
    """Append an event; the stream is capped (approximately) so it never grows without bound."""
    maxlen = keys.SIGNALS_MAXLEN if stream == keys.SIGNALS else keys.EVENTS_MAXLEN
    entry_id = await redis.xadd(stream, _event_fields(event), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
    return str(entry_id)


def queue_event(pipe: Pipeline, event: Event, *, stream: str = keys.EVENTS) -> None:
    """Queue `publish`'s XADD on a pipeline (after the state write it announces)."""
    maxlen = keys.SIGNALS_MAXLEN if stream == keys.SIGNALS else keys.EVENTS_MAXLEN
    pipe.xadd(stream, _event_fields(event), maxlen=maxlen, approximate=True)  # type: ignore[arg-type]


async def last_id(redis: RedisClient, stream: str = keys.EVENTS) -> str:
    """The id of the newest entry, or `0-0` for an empty or missing stream."""
    entries = await redis.xrevrange(stream, count=1)
    return str(entries[0][0]) if entries else "0-0"


async def first_id(redis: RedisClient, stream: str = keys.EVENTS) -> str | None:
    entries = await redis.xrange(stream, count=1)
    return str(entries[0][0]) if entries else None


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def trimmed_past(redis: RedisClient, after_id: str, stream: str = keys.EVENTS) -> bool:
    """True when entries newer than `after_id` may have been trimmed away (the reader must re-snapshot)."""
    if after_id == "0-0":
        return False
    first = await first_id(redis, stream)
    if first is None:
        # An empty stream after we had read from it: it was deleted or trimmed whole.
        return True
    return _id_tuple(first) > _id_tuple(after_id) and not await _exists(redis, after_id, stream)


async def _exists(redis: RedisClient, entry_id: str, stream: str) -> bool:
    return bool(await redis.xrange(stream, min=entry_id, max=entry_id, count=1))


@dataclass(slots=True)
class Snapshot:
    """All endpoint state at one moment, and the event id to tail from."""

    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # indexed names whose state TTL ran out
    last_event_id: str = "0-0"
    taken_at: float = field(default_factory=time.time)


async def read_snapshot(redis: RedisClient) -> Snapshot:
    # Take the stream position first: an event that lands while we read is then replayed, never lost.
    position = await last_id(redis)
    names = [str(n) for n in await redis.zrange(keys.ENDPOINT_INDEX, 0, -1)]
    snapshot = Snapshot(last_event_id=position)
    if not names:
        return snapshot
    values = await redis.mget([keys.endpoint_state(n) for n in names])
    for name, raw in zip(names, values, strict=True):
        if raw is None:
            snapshot.expired.add(name)
        else:
            snapshot.endpoints[name] = EndpointState.model_validate_json(raw)
    return snapshot


async def read_events(
    redis: RedisClient, after_id: str, *, block_ms: int | None = None, count: int = 500, stream: str = keys.EVENTS
) -> list[tuple[str, Event]]:
    """Events after `after_id`, oldest first; blocks up to `block_ms` when there are none."""
    reply: Any = await redis.xread({stream: after_id}, count=count, block=block_ms)
    out: list[tuple[str, Event]] = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            out.append((str(entry_id), Event.model_validate_json(fields["event"])))
    return out


async def read_warm_states(redis: RedisClient) -> list[WarmState]:
    members = [str(m) for m in await redis.zrange(keys.WARM_INDEX, 0, -1)]
    if not members:
        return []
    names = [tuple(m.split("\x1f", 1)) for m in members]
    values = await redis.mget([keys.warm_state(e, m) for e, m in names])
    out: list[WarmState] = []
    for value in values:
        if value is None:
            continue
        try:
            out.append(WarmState.model_validate_json(value))
        except ValidationError:
            continue  # written by another Pier version (e.g. an old phase name): not ours to show
    return out


async def beat(redis: RedisClient, service: str, instance_id: str, *, ttl_s: float) -> None:
    await redis.set(keys.heartbeat(service, instance_id), f"{time.time():.3f}", px=max(1000, int(ttl_s * 1000)))


async def heartbeat_age_s(redis: RedisClient, service: str, instance_id: str) -> float | None:
    """Seconds since the instance last beat, or None when its heartbeat is gone."""
    raw = await redis.get(keys.heartbeat(service, instance_id))
    return None if raw is None else max(0.0, time.time() - float(raw))
