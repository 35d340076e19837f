"""Two health workers, one lease: one probes, the other stands by and takes over when the leader dies."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from redis.asyncio import Redis

from shared import keys
from shared.state import EndpointStatus
from tests.harness import ProcessFactory, wait_for
from tests.health.support import (
    Emu,
    all_events,
    endpoint_entry,
    health_env,
    read_state,
    start_emulator,
    start_health,
    wait_status,
    write_config,
)

LEASE_TTL_S = 2.0


async def holder_is(redis: Redis, instance: str) -> bool:
    return await redis.get(keys.HEALTH_LEASE) == instance


async def written_by(redis: Redis, instance: str) -> bool:
    state = await read_state(redis, "emu")
    return state is not None and state.writer == instance


async def steady_gaps(emu: Emu, probes: int) -> list[float]:
    """Gaps between the next `probes` health probes (each about 1 s apart when one worker probes)."""
    start = len(await emu.probe_times())

    async def enough() -> list[float]:
        times = await emu.probe_times()
        return times[start:] if len(times) >= start + probes else []

    times = await wait_for(enough, timeout_s=probes * 3 + 10, what=f"{probes} probes")
    return [b - a for a, b in itertools.pairwise(times)]


async def test_leader_failover(procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path) -> None:
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    extra = {"PIER_LEASE_TTL_S": f"{LEASE_TTL_S:g}s"}
    a = start_health(procs, health_env(redis_url, tmp_path, config, instance="a", **extra))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=a)
    assert await holder_is(redis, "a")
    b = start_health(procs, health_env(redis_url, tmp_path, config, instance="b", **extra))
    await wait_for(lambda: redis.exists(keys.heartbeat("health", "b")), what="b's heartbeat")

    # Steady state with a standby: one probe a second, not two (no double probing), all written by `a`.
    gaps = await steady_gaps(emu, 6)
    print("probe gaps with two workers:", [round(g, 3) for g in gaps])
    # Two workers probing would average 0.5 s; one averages 1 s (a busy moment only stretches the mean).
    assert sum(gaps) / len(gaps) > 0.8
    assert await written_by(redis, "a")
    events_before = len(await all_events(redis))

    # The leader dies without releasing the lease: the standby takes over once it expires.
    a.kill()
    killed_at = time.monotonic()
    await wait_for(lambda: holder_is(redis, "b"), timeout_s=4 * LEASE_TTL_S + 10, what="b to take the lease")
    takeover_s = time.monotonic() - killed_at
    print(f"takeover after SIGKILL: {takeover_s:.2f}s (lease {LEASE_TTL_S:g}s)")
    assert takeover_s < 2 * LEASE_TTL_S + 1.5
    await wait_for(lambda: written_by(redis, "b"), timeout_s=10, what="b to write the state")
    gaps = await steady_gaps(emu, 4)
    assert sum(gaps) / len(gaps) > 0.8
    # The new leader started from the state in Redis: the endpoint did not change, so nothing is announced.
    assert len(await all_events(redis)) == events_before

    # A graceful stop releases the lease: a restarted `a`, standing by, takes over at once.
    a2 = start_health(procs, health_env(redis_url, tmp_path, config, instance="a", **extra))
    await wait_for(lambda: redis.exists(keys.heartbeat("health", "a")), what="a's heartbeat")
    assert await holder_is(redis, "b")
    assert b.stop() == 0
    stopped_at = time.monotonic()
    await wait_for(lambda: holder_is(redis, "a"), timeout_s=4 * LEASE_TTL_S + 10, what="a to take the lease")
    handover_s = time.monotonic() - stopped_at
    print(f"takeover after SIGTERM: {handover_s:.2f}s")
    assert handover_s < LEASE_TTL_S + 1.5  # no waiting for expiry: it was released
    await wait_for(lambda: written_by(redis, "a"), timeout_s=10, what="a to write the state")
    assert a2.alive()
