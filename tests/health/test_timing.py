"""The health worker process on its timers: intervals honoured, backoff observed, outages and recoveries.

Timings are read from the emulator's request log (arrival times of the worker's probes). Intervals are
asserted as means over several probes; the scheduler anchors each wait to the previous probe's start, so
the mean does not drift even on a loaded machine.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from shared.state import EndpointStatus, EventKind
from tests.harness import ProcessFactory, wait_for
from tests.health.support import (
    HEALTH_PATH,
    Emu,
    all_events,
    endpoint_entry,
    health_env,
    start_emulator,
    start_health,
    wait_status,
    write_config,
)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


async def probes_at_least(emu: Emu, count: int, *, timeout_s: float) -> list[float]:
    async def enough() -> list[float]:
        times = await emu.probe_times()
        return times if len(times) >= count else []

    return await wait_for(enough, timeout_s=timeout_s, what=f"{count} probes of {emu.url}")


async def test_backoff_schedule_observed(procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path) -> None:
    """Four failing probes wait 1, 2, 4, 8 x the interval; the success after them resets it to 1 x."""
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    await emu.fault(mode="status", status=500, count=4, paths=[HEALTH_PATH])
    await wait_status(redis, "emu", EndpointStatus.UNHEALTHY, proc=health)

    async def run_over() -> list[dict[str, Any]] | None:
        log = [r for r in await emu.requests() if r["path"] == HEALTH_PATH]
        first = next((i for i, r in enumerate(log) if r["fault"] == "status"), None)
        return log[first:] if first is not None and len(log) - first >= 6 else None

    run = await wait_for(run_over, timeout_s=40, what="4 failed probes and 2 good ones")
    assert [r["fault"] for r in run[:6]] == ["status"] * 4 + [None, None]
    observed = gaps([r["at"] for r in run[:6]])
    print("probe gaps (s), 4 failures then success:", observed)
    expected = [1.0, 2.0, 4.0, 8.0, 1.0]
    # A busy machine only makes a probe late, and a late probe shortens the next gap by as much (each wait is
    # anchored to the previous probe's start): so a lower bound per gap with that slack, and the schedule as
    # a whole bounded above by its sum. A missing backoff (all ~1 s) fails the lower bounds; a missing reset
    # (a 5th gap of 12 s) fails the sum.
    for got, want in zip(observed, expected, strict=True):
        assert got >= want - max(0.1 * want, 0.3), observed
    assert sum(observed) <= sum(expected) * 1.1 + 1.0, observed
    assert observed[4] < observed[3] / 2, observed  # the success reset the backoff
    healthy = await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    assert healthy.consecutive_failures == 0


async def test_intervals_honoured_and_a_hang_delays_nothing(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    fast, slow, hung = start_emulator(procs), start_emulator(procs), start_emulator(procs)
    await hung.fault(mode="hang")
    config = write_config(
        tmp_path / "pier.yaml",
        endpoint_entry("fast", fast.url, interval="1s"),
        endpoint_entry("slow", slow.url, interval="3s", timeout="2s"),
        endpoint_entry("hung", hung.url, interval="1s", timeout="900ms"),
    )
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "fast", EndpointStatus.HEALTHY, proc=health)
    await wait_status(redis, "hung", EndpointStatus.OFFLINE, proc=health)
    slow_times = await probes_at_least(slow, 5, timeout_s=40)  # 4 intervals of 3 s
    fast_times = [t for t in await fast.probe_times() if slow_times[0] <= t <= slow_times[-1]]
    fast_mean = (fast_times[-1] - fast_times[0]) / (len(fast_times) - 1)
    slow_mean = (slow_times[4] - slow_times[0]) / 4
    print(f"fast: {len(fast_times)} probes, mean {fast_mean:.3f}s; slow: mean {slow_mean:.3f}s")
    print("fast gaps:", gaps(fast_times), "slow gaps:", gaps(slow_times[:5]))
    assert len(fast_times) >= 10
    assert fast_mean == pytest.approx(1.0, rel=0.1)
    assert slow_mean == pytest.approx(3.0, rel=0.1)
    # While `hung` held a probe open for its whole timeout, `fast` kept its beat. Were it blocked, nearly every
    # gap would be ~1.9 s; a busy moment may stretch one gap, so at most a tenth of them may pass 1.5 s.
    long_gaps = [g for g in gaps(fast_times) if g >= 1.5]
    assert len(long_gaps) <= len(fast_times) // 10, gaps(fast_times)
    assert len(await hung.probe_times()) >= 2


async def test_killed_and_restarted_emulator(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    port = emu.proc.port
    assert port is not None
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    emu.proc.kill()
    down = await wait_status(redis, "emu", EndpointStatus.OFFLINE, timeout_s=10, proc=health)
    assert down.last_error is not None
    assert down.models == ("ai/smollm2:latest",)  # last known inventory kept
    # It comes back upgraded (a DMR upgrade is a restart): the version is read again after the outage.
    start_emulator(procs, "--version", "v9.9.9", port=port)
    back = await wait_status(redis, "emu", EndpointStatus.HEALTHY, timeout_s=30, proc=health)
    assert back.consecutive_failures == 0
    assert back.last_error is None
    assert back.version == "v9.9.9"
    versions = [e for e in await all_events(redis) if e.kind is EventKind.VERSION_CHANGED]
    assert [e.detail for e in versions] == [{"previous": "v1.2.6", "version": "v9.9.9"}]
    statuses = [e.detail["status"] for e in await all_events(redis) if e.kind is EventKind.STATUS_CHANGED]
    assert statuses == ["offline", "healthy"]
    # Back within the backoff wait in force when it returned (at most 12 x 1 s here).
    assert back.checked_at - down.checked_at < 1 + 2 + 4 + 8 + 12 + 5


async def test_rate_limit_and_config_error_pacing(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """429: no probe until Retry-After. 401: not a failure, so the interval stays 1 s (no backoff)."""
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)

    await emu.fault(mode="status", status=429, retry_after=4, count=1, paths=[HEALTH_PATH])
    limited = await wait_status(redis, "emu", EndpointStatus.RATE_LIMITED, proc=health)
    assert limited.retry_after_until is not None
    assert limited.retry_after_until - limited.checked_at == pytest.approx(4.0, abs=0.01)
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, timeout_s=20, proc=health)
    log = [r for r in await emu.requests() if r["path"] == HEALTH_PATH]
    i = next(i for i, r in enumerate(log) if r["fault"] == "status")
    gap_s = log[i + 1]["at"] - log[i]["at"]
    print(f"gap after a 429 with Retry-After 4: {gap_s:.3f}s")
    assert gap_s >= 3.9

    await emu.fault(mode="status", status=401, count=4, paths=[HEALTH_PATH])
    denied = await wait_status(redis, "emu", EndpointStatus.CONFIG_ERROR, proc=health)
    assert denied.consecutive_failures == 0
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, timeout_s=20, proc=health)
    log = [r for r in await emu.requests() if r["path"] == HEALTH_PATH]
    faulted = [r["at"] for r in log if r["fault"] == "status"][1:]  # the four 401s
    observed = gaps(faulted)
    print("gaps between 401 probes:", observed)
    assert len(observed) == 3
    # No backoff: never faster than the interval (less a late previous probe's slack), and on average about
    # 1 s (a backoff of 1, 2, 4 s would average 2.3 s).
    assert min(observed) >= 0.7, observed
    assert sum(observed) / len(observed) <= 1.4, observed
