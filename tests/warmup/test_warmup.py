"""The warm-up worker against a real DMR emulator and a real Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from services.warmup.plan import plan_preloads
from services.warmup.settings import WarmupSettings
from services.warmup.worker import WarmupWorker
from shared import keys, statestore
from shared.names import normalise_model
from shared.state import EndpointState, EndpointStatus, EventKind, LoadedModel, WarmPhase
from tests.harness import ROOT, ProcessFactory, wait_for, wait_for_sync


def dmr_state(
    name: str, url: str, *, loaded: tuple[str, ...] = (), status: EndpointStatus = EndpointStatus.HEALTHY
) -> EndpointState:
    return EndpointState(
        name=name,
        url=url,
        type="docker-model-runner",
        priority=95,
        status=status,
        models=("ai/smollm2:latest",),
        models_known=True,
        loaded=tuple(LoadedModel(name=m) for m in loaded),
        loaded_known=True,
        ttl_s=60,
    )


def test_plan_skips_loaded_unroutable_and_unwanted() -> None:
    states = {
        "a": dmr_state("a", "http://a"),
        "b": dmr_state("b", "http://b", loaded=("ai/smollm2:latest",)),
        "c": dmr_state("c", "http://c", status=EndpointStatus.OFFLINE),
    }
    plan = plan_preloads(states, ["ai/smollm2:latest", "ai/other:latest"], in_flight=frozenset(), now=0)
    assert [(p.endpoint.name, p.model) for p in plan] == [("a", "ai/smollm2:latest")]
    busy = plan_preloads(states, ["ai/smollm2:latest"], in_flight=frozenset({("a", "ai/smollm2:latest")}), now=0)
    assert busy == []


async def test_preloads_a_cold_model_and_records_it_warm(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "200")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url))
    settings = WarmupSettings(redis_url=redis_url, warmup_models=("smollm2",), instance_id="w1")
    worker = WarmupWorker(settings, settings.pier_config())
    try:
        plan = await worker.run_once()
        assert [(p.endpoint.name, p.model) for p in plan] == [("dmr-a", "ai/smollm2:latest")]
        await worker.wait_idle()
    finally:
        await worker.close()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{emulator.url}/engines/ps") as resp:
            ps = await resp.json()
        async with http.get(f"{emulator.url}/_emulator/requests") as resp:
            received = await resp.json()
    assert [normalise_model(r["model_name"]) for r in ps] == ["ai/smollm2:latest"]
    assert not ps[0].get("loading", False)
    preloads = [r for r in received if r["path"] == "/engines/v1/chat/completions"]
    assert len(preloads) == 1
    assert {k.lower(): v for k, v in preloads[0]["headers"].items()}["x-preload-only"] == "true"

    warm = await statestore.read_warm_states(redis)
    assert [(w.endpoint, w.model, w.phase) for w in warm] == [("dmr-a", "ai/smollm2:latest", WarmPhase.WARM)]
    assert warm[0].load_time_s is not None
    assert warm[0].load_time_s >= 0.2
    events = [e for _, e in await statestore.read_events(redis, "0-0")]
    assert [(e.kind, e.warm.phase if e.warm else None) for e in events] == [
        (EventKind.WARM_CHANGED, WarmPhase.WARMING),
        (EventKind.WARM_CHANGED, WarmPhase.WARM),
    ]


async def test_a_failed_preload_is_recorded_failed(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2")
    async with aiohttp.ClientSession() as http:
        fault = {"mode": "status", "status": 500}
        async with http.post(f"{emulator.url}/_emulator/fault", json=fault) as resp:
            assert resp.status == 200
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url))
    settings = WarmupSettings(redis_url=redis_url, warmup_models=("ai/smollm2",), instance_id="w1")
    worker = WarmupWorker(settings, settings.pier_config())
    try:
        await worker.run_once()
        await worker.wait_idle()
    finally:
        await worker.close()
    (warm,) = await statestore.read_warm_states(redis)
    assert warm.phase is WarmPhase.FAILED
    assert warm.last_error is not None
    assert "500" in warm.last_error


def run_check(env: dict[str, str]) -> int:
    return subprocess.run(
        [sys.executable, "-m", "services.warmup", "--check"], env=env, cwd=ROOT, capture_output=True, timeout=30
    ).returncode


async def test_check_follows_the_heartbeat(procs: ProcessFactory, redis_url: str, tmp_path: Path) -> None:
    env = {"PIER_REDIS_URL": redis_url, "PIER_WARMUP_ID_FILE": str(tmp_path / "id"), "PIER_HEARTBEAT_TTL_S": "2s"}
    check_env = {**procs.base_env, **env}
    assert run_check(check_env) == 1  # nothing running yet
    worker = procs.python("warmup", "services.warmup", env=env)
    wait_for_sync(lambda: run_check(check_env) == 0, timeout_s=20, what="--check to pass")
    redis = statestore.connect(redis_url)
    try:
        assert await redis.exists(keys.heartbeat("warmup", (tmp_path / "id").read_text()))
    finally:
        await redis.aclose()
    worker.kill()
    await wait_for(lambda: run_check(check_env) == 1, timeout_s=20, what="--check to fail after SIGKILL")


def test_sigterm_exits_promptly(procs: ProcessFactory, redis_url: str, tmp_path: Path) -> None:
    worker = procs.python(
        "warmup", "services.warmup", env={"PIER_REDIS_URL": redis_url, "PIER_WARMUP_ID_FILE": str(tmp_path / "id")}
    )
    wait_for_sync(lambda: (tmp_path / "id").exists(), timeout_s=20, what="the worker to start")
    assert worker.stop(timeout_s=5) == 0
