"""The worker as a process: liveness (--check), SIGTERM, SIGKILL, bad config, signals, zero-config, pruning."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared import keys, statestore
from shared.state import EndpointState, EndpointStatus, Event, EventKind
from tests.harness import ROOT, ProcessFactory, RedisServer, free_port, wait_for
from tests.health.support import (
    all_events,
    endpoint_entry,
    health_env,
    read_state,
    start_emulator,
    start_health,
    wait_status,
    write_config,
)


def run_check(env: dict[str, str], base_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.health", "--check"],
        cwd=ROOT,
        env={**base_env, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


async def test_check_exit_codes(procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path) -> None:
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url))
    env = health_env(redis_url, tmp_path, config)
    before = run_check(env, procs.base_env)
    assert before.returncode == 1, before
    assert "no running worker" in before.stdout + before.stderr

    health = start_health(procs, env)
    await wait_for(lambda: redis.exists(keys.heartbeat("health", "h1")), what="heartbeat")
    running = run_check(env, procs.base_env)
    assert running.returncode == 0, running

    # Another worker's fresh heartbeat does not make this container healthy.
    other = run_check({**env, "PIER_HEALTH_ID_FILE": str(tmp_path / "other.id")}, procs.base_env)
    assert other.returncode == 1

    # Redis unreachable: a failed check, one line, no traceback.
    dead_redis = run_check({**env, "PIER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, procs.base_env)
    assert dead_redis.returncode == 1
    assert "Traceback" not in dead_redis.stdout + dead_redis.stderr

    assert health.stop() == 0
    after = run_check(env, procs.base_env)
    assert after.returncode == 1


async def test_sigterm_exits_fast_and_releases_the_lease(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu, hung = start_emulator(procs), start_emulator(procs)
    await hung.fault(mode="hang")
    config = write_config(
        tmp_path / "pier.yaml",
        endpoint_entry("emu", emu.url),
        # A probe that stays in flight for up to 9 s: SIGTERM must cancel it, not wait for it.
        endpoint_entry("hung", hung.url, interval="10s", timeout="9s"),
    )
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    await wait_for(lambda: hung.probe_times(), what="the hanging probe in flight")
    assert await redis.get(keys.HEALTH_LEASE) == "h1"
    started = time.monotonic()
    code = health.stop(timeout_s=10)
    elapsed_s = time.monotonic() - started
    print(f"SIGTERM -> exit {code} in {elapsed_s:.2f}s")
    assert code == 0, health.output()[-2000:]
    assert elapsed_s < 5.0
    assert await redis.get(keys.HEALTH_LEASE) is None  # released, not left to expire
    assert await redis.exists(keys.heartbeat("health", "h1")) == 0
    assert "Traceback" not in health.output()


async def test_state_expires_when_the_worker_is_killed(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    state = await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    assert state.ttl_s == 5.0
    health.kill()

    async def expired() -> bool:
        return await redis.exists(keys.endpoint_state("emu")) == 0

    await wait_for(expired, timeout_s=15, what="state to expire")
    snapshot = await statestore.read_snapshot(redis)
    assert "emu" in snapshot.expired  # readers show it as unknown
    assert "emu" not in snapshot.endpoints


@pytest.mark.parametrize(
    ("env", "config_text", "key"),
    [
        ({"PIER_BUSY_THRESHOLD_S": "soon"}, None, "PIER_BUSY_THRESHOLD_S"),
        ({"PIER_DOCKER_DISCOVERY": "maybe"}, None, "PIER_DOCKER_DISCOVERY"),
        ({}, "endpoints:\n  - {name: a, url: 'ftp://x'}\n", "endpoints[0].url"),
        ({}, "endpoints:\n  - {name: a, url: 'http://x', check_interval: 1s, check_timeout: 2s}\n", "endpoints[0]"),
        ({}, "endpoints: [\n", "PIER_CONFIG_FILE"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    env: dict[str, str], config_text: str | None, key: str, procs: ProcessFactory, redis_url: str, tmp_path: Path
) -> None:
    config = None
    if config_text is not None:
        config = tmp_path / "pier.yaml"
        config.write_text(config_text, encoding="utf-8")
    proc = start_health(procs, {**health_env(redis_url, tmp_path, config), **env})
    assert proc.popen.wait(timeout=30) == 2
    lines = [line for line in proc.output().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"config error: {key}"), lines


async def test_router_signal_triggers_a_probe_at_once(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="30s", timeout="2s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    healthy = await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)
    assert healthy.next_check_at is not None
    await emu.fault(mode="refuse")
    await statestore.publish(redis, Event(kind=EventKind.ENDPOINT_DOWN, endpoint="emu"), stream=keys.SIGNALS)
    down = await wait_status(redis, "emu", EndpointStatus.OFFLINE, timeout_s=20, proc=health)
    # Probed because of the signal, long before its 30 s timer.
    assert down.checked_at < healthy.next_check_at
    assert "reported down by a router" in health.output()


async def test_zero_config_adopts_the_first_dmr_that_answers(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    nothing = f"http://127.0.0.1:{free_port()}"
    env = health_env(redis_url, tmp_path, None, PIER_AUTODETECT_CANDIDATES=f"{nothing},{emu.url}")
    health = start_health(procs, env)
    state = await wait_status(redis, "dmr", EndpointStatus.HEALTHY, proc=health)
    assert state.url == emu.url
    assert state.source == "auto"
    assert state.type == "docker-model-runner"
    assert f"adopted DMR at {emu.url}" in health.output()


async def test_endpoints_dropped_from_the_config_are_removed(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    a, b = start_emulator(procs), start_emulator(procs)
    # `a` every 3 s: its state lives ~10 s, so it is still in Redis when the second worker (slow to start on a
    # loaded machine) takes over; with 1 s it could expire first, and then "added" again would be right.
    a_entry = endpoint_entry("a", a.url, interval="3s")
    config = write_config(tmp_path / "pier.yaml", a_entry, endpoint_entry("b", b.url))
    first = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "b", EndpointStatus.HEALTHY, proc=first)
    await wait_status(redis, "a", EndpointStatus.HEALTHY, proc=first)
    assert first.stop() == 0
    write_config(config, a_entry)
    second = start_health(procs, health_env(redis_url, tmp_path, config, instance="h2"))

    async def removed() -> list[Event]:
        return [e for e in await all_events(redis) if e.kind is EventKind.ENDPOINT_REMOVED]

    (event,) = await wait_for(removed, timeout_s=20, what="b removed")
    assert event.endpoint == "b"
    assert await read_state(redis, "b") is None
    assert "b" not in await redis.zrange(keys.ENDPOINT_INDEX, 0, -1)
    # `a` carried over: the new leader started from the state in Redis, so no new "added" event for it.
    await wait_for(lambda: _written_by(redis, "a", "h2"), timeout_s=20, what="a probed by h2")
    added = [e.endpoint for e in await all_events(redis) if e.kind is EventKind.ENDPOINT_ADDED]
    assert sorted(added) == ["a", "b"]
    assert second.alive()


async def _written_by(redis: Redis, name: str, writer: str) -> bool:
    state = await read_state(redis, name)
    return state is not None and state.writer == writer


async def test_redis_restart_is_survived(procs: ProcessFactory, own_redis: RedisServer, tmp_path: Path) -> None:
    """Redis goes away and comes back empty: the worker keeps running, re-takes the lease, republishes."""
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(own_redis.url, tmp_path, config, PIER_LEASE_TTL_S="2s"))
    client: Redis = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        await wait_status(client, "emu", EndpointStatus.HEALTHY, proc=health)
        own_redis.stop()
        await wait_for(lambda: "heartbeat failed" in health.output(), timeout_s=15, what="the outage noticed")
        own_redis.restart()
        await client.aclose()
        client = Redis.from_url(own_redis.url, decode_responses=True)
        back = await wait_status(client, "emu", EndpointStatus.HEALTHY, timeout_s=30, proc=health)
        assert back.writer == "h1"

        async def lease_and_beat() -> bool:
            return await client.get(keys.HEALTH_LEASE) == "h1" and bool(
                await client.exists(keys.heartbeat("health", "h1"))
            )

        await wait_for(lease_and_beat, timeout_s=20, what="lease and heartbeat in the new Redis")
        # Still probing on time in the new Redis (readers re-snapshot a new Redis; see docs/state.md).
        again = await wait_for(lambda: _checked_after(client, back.checked_at + 1.5), timeout_s=10, what="probes")
        # Written by the worker that holds the new Redis's lease (not a stale write from before the outage).
        assert again.writer == await client.get(keys.HEALTH_LEASE) == "h1"
        assert health.alive()
        assert "Traceback" not in health.output()
    finally:
        await client.aclose()


async def _checked_after(redis: Redis, when: float) -> EndpointState | None:
    state = await read_state(redis, "emu")
    return state if state is not None and state.checked_at > when and state.status is EndpointStatus.HEALTHY else None
