"""`python -m services.warmup` as a process: --check, config errors, the lease between replicas, SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys, statestore
from shared.state import EndpointState, WarmPhase
from tests.harness import ROOT, Proc, ProcessFactory, RedisServer, wait_for, wait_for_sync
from tests.warmup.support import dmr_state, emulator_state, requests_to

SMOL, GEMMA = "ai/smollm2:latest", "ai/gemma3:latest"
LEASE_TTL_S = 2.0


def warmup_env(redis_url: str, tmp_path: Path, instance: str, **extra: str) -> dict[str, str]:
    return {
        "PIER_REDIS_URL": redis_url,
        "PIER_INSTANCE_ID": instance,
        "PIER_WARMUP_ID_FILE": str(tmp_path / f"{instance}.id"),
        "PIER_LEASE_TTL_S": f"{LEASE_TTL_S:g}s",
        **extra,
    }


def start_warmup(procs: ProcessFactory, env: dict[str, str]) -> Proc:
    return procs.python("warmup", "services.warmup", env=env)


def run_check(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "services.warmup", "--check"], env=env, cwd=ROOT, capture_output=True, timeout=30
    ).returncode


async def phases(redis: Redis) -> dict[tuple[str, str], WarmPhase]:
    return {(w.endpoint, w.model): w.phase for w in await statestore.read_warm_states(redis)}


async def test_check_follows_the_heartbeat(procs: ProcessFactory, redis_url: str, tmp_path: Path) -> None:
    env = {**warmup_env(redis_url, tmp_path, "w1"), "PIER_HEARTBEAT_TTL_S": "2s"}
    check_env = {**procs.base_env, **env}
    assert run_check(check_env) == 1  # nothing running yet
    worker = start_warmup(procs, env)
    wait_for_sync(lambda: run_check(check_env) == 0, timeout_s=20, what="--check to pass")
    worker.kill()
    await wait_for(lambda: run_check(check_env) == 1, timeout_s=20, what="--check to fail after SIGKILL")


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("warmup:\n  models:\n    - {model: ai/smollm2, policy: always}\n", "warmup.models[0].policy"),
        ("warmup:\n  runner_limits: {dmr: -1}\n", "warmup.runner_limits.dmr"),
    ],
)
def test_a_bad_warmup_section_exits_2_with_one_line(
    procs: ProcessFactory, tmp_path: Path, yaml_text: str, key: str
) -> None:
    config = tmp_path / "pier.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    env = {**procs.base_env, "PIER_CONFIG_FILE": str(config), "PIER_REDIS_URL": "redis://127.0.0.1:9/0"}
    result = subprocess.run(
        [sys.executable, "-m", "services.warmup"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert key in lines[0]
    assert "Traceback" not in result.stderr


def test_a_bad_setting_exits_2(procs: ProcessFactory) -> None:
    env = {**procs.base_env, "PIER_WARMUP_RUNNER_LIMIT": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "services.warmup"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "PIER_WARMUP_RUNNER_LIMIT" in result.stderr


async def test_two_replicas_preload_once_and_fail_over(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = procs.emulator("--models", "ai/smollm2,ai/gemma3", "--load-time-ms", "1500")
    await statestore.write_endpoint_state(redis, dmr_state("dmr", emu.url, SMOL, GEMMA))
    extra = {"PIER_WARMUP_MODELS": "smollm2,gemma3"}
    a = start_warmup(procs, warmup_env(redis_url, tmp_path, "a", **extra))
    await wait_for(lambda: redis.get(keys.WARMUP_LEASE), timeout_s=20, what="a to lead")
    b = start_warmup(procs, warmup_env(redis_url, tmp_path, "b", **extra))
    await wait_for(lambda: redis.exists(keys.heartbeat("warmup", "b")), timeout_s=20, what="b's heartbeat")

    async def both_warm() -> bool:
        return await phases(redis) == {("dmr", SMOL): WarmPhase.WARM, ("dmr", GEMMA): WarmPhase.WARM}

    await wait_for(both_warm, timeout_s=30, what="both models warm")
    preloads = await requests_to(emu.url, "/engines/v1/chat/completions")
    assert sorted(p["body"]["model"] for p in preloads) == [GEMMA, SMOL]  # once each, not once per replica
    assert (await emulator_state(emu.url))["counters"]["loads_started"] == 2

    # The leader dies without releasing the lease: the other takes over within the lease time.
    leader = await redis.get(keys.WARMUP_LEASE)
    other = "b" if leader == "a" else "a"
    (a if leader == "a" else b).kill()
    killed_at = time.monotonic()
    await wait_for(lambda: _holder_is(redis, other), timeout_s=4 * LEASE_TTL_S + 10, what=f"{other} to lead")
    takeover_s = time.monotonic() - killed_at
    print(f"warm-up takeover after SIGKILL: {takeover_s:.2f}s (lease {LEASE_TTL_S:g}s)")
    assert takeover_s < LEASE_TTL_S + LEASE_TTL_S / 3 + 1.5  # expiry + one standby poll + scheduling slack
    # The new leader sees both models loaded (a fresh /engines/ps) and loads nothing again.
    await wait_for(
        lambda: _written_by(redis, other), timeout_s=LEASE_TTL_S + 10, what=f"{other} to rewrite the warm state"
    )
    assert len(await requests_to(emu.url, "/engines/v1/chat/completions")) == 2
    assert (await emulator_state(emu.url))["counters"]["loads_started"] == 2


async def _holder_is(redis: Redis, instance: str) -> bool:
    return await redis.get(keys.WARMUP_LEASE) == instance


async def _written_by(redis: Redis, instance: str) -> bool:
    warm = await statestore.read_warm_states(redis)
    return bool(warm) and all(w.writer == instance for w in warm)


async def test_sigterm_lets_a_preload_in_flight_finish(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "3000")
    await statestore.write_endpoint_state(redis, dmr_state("dmr", emu.url, SMOL))
    worker = start_warmup(procs, warmup_env(redis_url, tmp_path, "w", PIER_WARMUP_MODELS="smollm2"))

    async def loading() -> bool:
        return (await phases(redis)).get(("dmr", SMOL)) is WarmPhase.LOADING

    await wait_for(loading, timeout_s=20, what="the preload to start")
    assert worker.stop(timeout_s=30) == 0  # SIGTERM; exits once the load is done
    counters = (await emulator_state(emu.url))["counters"]
    assert (counters["loads_completed"], counters["loads_aborted"]) == (1, 0)
    assert (await phases(redis))[("dmr", SMOL)] is WarmPhase.WARM
    assert await redis.get(keys.WARMUP_LEASE) is None  # released on the way out


def test_sigterm_exits_promptly_when_idle(procs: ProcessFactory, redis_url: str, tmp_path: Path) -> None:
    worker = start_warmup(procs, warmup_env(redis_url, tmp_path, "w"))
    wait_for_sync(lambda: (tmp_path / "w.id").exists(), timeout_s=20, what="the worker to start")
    started = time.monotonic()
    assert worker.stop(timeout_s=10) == 0
    assert time.monotonic() - started < 5


async def test_a_redis_restart_is_survived(procs: ProcessFactory, own_redis: RedisServer, tmp_path: Path) -> None:
    emu = procs.emulator("--models", "ai/smollm2,ai/gemma3", "--load-time-ms", "100")
    redis = statestore.connect(own_redis.url)
    try:
        await statestore.write_endpoint_state(redis, dmr_state("dmr", emu.url, SMOL))
        worker = start_warmup(procs, warmup_env(own_redis.url, tmp_path, "w", PIER_WARMUP_MODELS="smollm2,gemma3"))
        await wait_for(lambda: _phase_is(redis, SMOL, WarmPhase.WARM), timeout_s=30, what="smollm2 warm")
        own_redis.restart()  # a new, empty Redis on the same port
        # The health worker would write the state again; this time it also lists gemma3.
        await wait_for(
            lambda: _write_state(redis, dmr_state("dmr", emu.url, SMOL, GEMMA)), timeout_s=20, what="redis back"
        )
        await wait_for(lambda: _holder_is(redis, "w"), timeout_s=20, what="the lease taken again")
        await wait_for(lambda: _phase_is(redis, GEMMA, WarmPhase.WARM), timeout_s=90, what="gemma3 warm")
        assert worker.alive()
    finally:
        await redis.aclose()


async def _phase_is(redis: Redis, model: str, phase: WarmPhase) -> bool:
    return (await phases(redis)).get(("dmr", model)) is phase


async def _write_state(redis: Redis, state: EndpointState) -> bool:
    try:
        await statestore.write_endpoint_state(redis, state)
    except (RedisError, OSError):
        return False
    return True
