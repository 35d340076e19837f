"""Events from the worker process: exactly one per real change, none in steady state."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from shared.inventory import loaded_signature
from shared.state import EndpointStatus, Event, EventKind
from tests.harness import ProcessFactory, wait_for
from tests.health.support import (
    Emu,
    all_events,
    endpoint_entry,
    health_env,
    read_state,
    start_emulator,
    start_health,
    write_config,
)


async def after_probes(emu: Emu, count: int) -> None:
    """Wait until the worker has probed `count` more times (steady state is observed, not slept through)."""
    target = len(await emu.probe_times()) + count

    async def done() -> bool:
        return len(await emu.probe_times()) >= target

    await wait_for(done, timeout_s=count * 3 + 10, what=f"{count} more probes")


async def events_of(redis: Redis, kind: EventKind) -> list[Event]:
    return [e for e in await all_events(redis) if e.kind is kind]


async def wait_event(redis: Redis, kind: EventKind, count: int = 1) -> list[Event]:
    async def check() -> list[Event]:
        found = await events_of(redis, kind)
        return found if len(found) >= count else []

    return await wait_for(check, timeout_s=20, what=f"{count} {kind.value} event(s)")


async def test_one_event_per_change(procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path) -> None:
    emu = start_emulator(procs, "--load-time-ms", "0")
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    (added,) = await wait_event(redis, EventKind.ENDPOINT_ADDED)
    assert added.state is not None
    assert added.state.status is EndpointStatus.HEALTHY
    assert added.writer == "h1"

    # Steady state: probes go on, state is rewritten, no event.
    await after_probes(emu, 3)
    assert [e.kind for e in await all_events(redis)] == [EventKind.ENDPOINT_ADDED]
    state = await read_state(redis, "emu")
    assert state is not None
    assert state.checked_at > added.at  # rewritten, yet silent

    # Models: a pull shows up once.
    await emu.configure(models=["ai/smollm2", "ai/gemma3"])
    (models,) = await wait_event(redis, EventKind.MODELS_CHANGED)
    assert models.detail == {"added": ["ai/gemma3:latest"], "removed": []}
    assert models.state is not None
    assert "ai/gemma3:latest" in models.state.models

    # Loaded: a model loaded by a request.
    async with aiohttp.ClientSession() as session:
        body = {"model": "ai/gemma3", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{emu.url}/engines/v1/chat/completions", json=body) as resp:
            assert resp.status == 200

    async def loaded_now() -> Event | None:
        found = await events_of(redis, EventKind.LOADED_CHANGED)
        return next((e for e in found if e.state and "ai/gemma3:latest" in e.state.loaded_names()), None)

    await wait_for(loaded_now, timeout_s=20, what="gemma3 loaded")

    # Status: several failing probes, one event; recovery, one event.
    await emu.fault(mode="status", status=500)
    (down,) = await wait_event(redis, EventKind.STATUS_CHANGED)
    assert down.detail["previous"] == "healthy"
    assert down.detail["status"] == "unhealthy"
    await after_probes(emu, 2)
    await emu.fault(mode="none")
    changes = await wait_event(redis, EventKind.STATUS_CHANGED, 2)
    assert [e.detail["status"] for e in changes] == ["unhealthy", "healthy"]

    await after_probes(emu, 3)
    events = await all_events(redis)
    counts = Counter(e.kind for e in events)
    assert counts[EventKind.ENDPOINT_ADDED] == 1
    assert counts[EventKind.MODELS_CHANGED] == 1
    assert counts[EventKind.STATUS_CHANGED] == 2
    # Loaded-set events: each one a different loaded set than the one before (no repeats).
    signatures = [loaded_signature(e.state.loaded) for e in events if e.kind is EventKind.LOADED_CHANGED and e.state]
    assert signatures
    assert signatures[0] != frozenset()  # nothing was loaded before
    assert all(a != b for a, b in itertools.pairwise(signatures))
    assert set(counts) == {
        EventKind.ENDPOINT_ADDED,
        EventKind.MODELS_CHANGED,
        EventKind.LOADED_CHANGED,
        EventKind.STATUS_CHANGED,
    }
    # Every event carries the endpoint's whole new state.
    assert all(e.state is not None and e.state.name == "emu" for e in events)
    assert health.alive()
