"""The warm-up worker's reconcile against real DMR emulator processes and a real Redis (no lease, no events)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from redis.asyncio import Redis

from services.warmup.plan import Memory, StepKind
from services.warmup.settings import WarmupSettings
from services.warmup.wanted import Wanted, WarmupConfig
from services.warmup.worker import WarmupWorker
from shared import keys, statestore
from shared.state import EndpointStatus, Event, EventKind, WarmPhase, WarmPolicy, WarmState
from tests.harness import ProcessFactory, wait_for
from tests.warmup.support import dmr_state, emulator_state, ps, requests_to

SMOL, GEMMA, QWEN = "ai/smollm2:latest", "ai/gemma3:latest", "ai/qwen3:latest"


def worker_for(redis_url: str, *wanted: Wanted, **settings: Any) -> WarmupWorker:
    limits = settings.pop("runner_limits", None)
    s = WarmupSettings(redis_url=redis_url, instance_id="w1", **settings)
    return WarmupWorker(s, s.pier_config(), WarmupConfig(tuple(wanted), limits))


async def test_preloads_every_wanted_model_with_preload_only(
    procs: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    emulator = procs.emulator("--models", "ai/smollm2,ai/gemma3", "--load-time-ms", "300")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL, GEMMA))
    worker = worker_for(redis_url, Wanted(SMOL), Wanted(GEMMA))
    try:
        await worker.run_once()
    finally:
        await worker.close()

    assert sorted(r["model_name"] for r in await ps(emulator.url)) == ["ai/gemma3:latest", "ai/smollm2:latest"]
    preloads = await requests_to(emulator.url, "/engines/v1/chat/completions")
    assert [p["body"]["model"] for p in preloads] == [SMOL, GEMMA]  # list order
    assert all({k.lower(): v for k, v in p["headers"].items()}["x-preload-only"] == "true" for p in preloads)
    assert all("max_tokens" not in p["body"] for p in preloads)  # the version says preload-only works

    warm = {w.model: w for w in await statestore.read_warm_states(redis)}
    assert {m: (w.phase, w.policy, w.method) for m, w in warm.items()} == {
        SMOL: (WarmPhase.WARM, WarmPolicy.KEEP, "preload-only"),
        GEMMA: (WarmPhase.WARM, WarmPolicy.KEEP, "preload-only"),
    }
    assert all(w.load_time_s is not None and w.load_time_s >= 0.3 for w in warm.values())
    events = [e for _, e in await statestore.read_events(redis, "0-0")]
    phases = [(e.warm.model, e.warm.phase) for e in events if e.kind is EventKind.WARM_CHANGED and e.warm]
    assert [p for p in phases if p[0] == SMOL] == [(SMOL, WarmPhase.LOADING), (SMOL, WarmPhase.WARM)]


async def test_unknown_version_is_probed_once_and_remembered(
    procs: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    emulator = procs.emulator("--models", "ai/smollm2,ai/gemma3", "--load-time-ms", "50")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL, GEMMA, version=None))
    worker = worker_for(redis_url, Wanted(SMOL), Wanted(GEMMA))
    try:
        await worker.run_once()
    finally:
        await worker.close()
    first, second = await requests_to(emulator.url, "/engines/v1/chat/completions")
    # The probe carries both the header and max_tokens 1; DMR's empty answer shows the header works.
    assert first["body"].get("max_tokens") == 1
    assert "max_tokens" not in second["body"]
    warm = {w.model: w.method for w in await statestore.read_warm_states(redis)}
    assert warm == {SMOL: "preload-only", GEMMA: "preload-only"}


async def test_pin_configures_keep_alive_minus_one(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "100")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL))
    worker = worker_for(redis_url, Wanted(SMOL, WarmPolicy.PIN))
    try:
        await worker.run_once()
        (entry,) = await ps(emulator.url)
        assert (entry["keep_alive"], entry.get("loading", False)) == ("-1", False)
        # Pinned: a second pass does nothing at all.
        before = len(worker.steps_done)
        await worker.run_once()
        assert len(worker.steps_done) == before
    finally:
        await worker.close()
    configures = await requests_to(emulator.url, "/engines/_configure")
    assert [c["body"] for c in configures] == [{"model": SMOL, "keep_alive": "-1"}]
    (warm,) = await statestore.read_warm_states(redis)
    assert (warm.phase, warm.policy) == (WarmPhase.WARM, WarmPolicy.PIN)


async def test_a_failed_load_backs_off_and_is_visible(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--fail-models", "ai/smollm2", "--load-time-ms", "20")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL))
    worker = worker_for(redis_url, Wanted(SMOL), warmup_backoff_initial_s=1.0)
    try:
        await worker.run_once()
        (warm,) = await statestore.read_warm_states(redis)
        assert warm.phase is WarmPhase.FAILED
        assert warm.last_error is not None
        assert "500" in warm.last_error
        assert warm.failures == 1
        assert warm.next_retry_at is not None
        assert warm.next_retry_at - time.time() > 0.5
        # Before the retry time: no new attempt, however often the worker plans.
        for _ in range(5):
            await worker.run_once()
        assert len(await requests_to(emulator.url, "/engines/v1/chat/completions")) == 1

        async def second_failure() -> bool:
            await worker.run_once()
            (w,) = await statestore.read_warm_states(redis)
            return w.failures == 2

        await wait_for(second_failure, timeout_s=10, what="the retry after the backoff")
        (warm,) = await statestore.read_warm_states(redis)
        assert warm.next_retry_at is not None
        assert warm.next_retry_at - time.time() > 1.0  # doubled: 2 s
    finally:
        await worker.close()
    assert len(await requests_to(emulator.url, "/engines/v1/chat/completions")) == 2


async def stream_forever(url: str, model: str, started: asyncio.Event) -> int:
    """A long streaming chat (the emulator's chunk interval keeps the runner busy)."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/engines/v1/chat/completions", json=body) as resp:
        started.set()
        chunks = 0
        async for _ in resp.content:
            chunks += 1
        return chunks


async def test_runner_limit_and_busy_models(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    # DMR itself would hold 4; Pier is told 2. A user streams from qwen3 (busy) the whole time.
    emulator = procs.emulator(
        "--models", "ai/smollm2,ai/gemma3,ai/qwen3", "--load-time-ms", "50", "--max-runners", "4",
        "--chunks", "40", "--chunk-interval-ms", "100",
    )  # fmt: skip
    started = asyncio.Event()
    user = asyncio.create_task(stream_forever(emulator.url, QWEN, started))
    await started.wait()
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL, GEMMA, QWEN))
    worker = worker_for(redis_url, Wanted(SMOL), Wanted(GEMMA), runner_limits={"dmr-a": 2})
    try:
        await worker.run_once()
        names = sorted(r["model_name"] for r in await ps(emulator.url))
        assert names == [QWEN, SMOL]  # gemma3 does not fit beside the busy qwen3
        warm = {w.model: w for w in await statestore.read_warm_states(redis)}
        assert (warm[SMOL].phase, warm[SMOL].fits) == (WarmPhase.WARM, True)
        assert (warm[GEMMA].phase, warm[GEMMA].fits) == (WarmPhase.COLD, False)
        assert "runner limit 2" in str(warm[GEMMA].detail)
        assert (await emulator_state(emulator.url))["counters"]["peak_runners"] == 2
        assert not user.done()
        chunks = await user  # the user's stream was never cut
        assert chunks >= 40
        # qwen3 is idle now, and nobody wanted it: gemma3 gets its place, qwen3 is unloaded (not evicted by DMR).
        await worker.run_once()
    finally:
        user.cancel()
        await worker.close()
    assert sorted(r["model_name"] for r in await ps(emulator.url)) == [GEMMA, SMOL]
    counters = (await emulator_state(emulator.url))["counters"]
    assert (counters["peak_runners"], counters["unloads"], counters["evictions"]) == (2, 1, 0)
    assert [s.kind for _, s in worker.steps_done] == [StepKind.LOAD, StepKind.UNLOAD, StepKind.LOAD]


async def test_keep_refreshes_before_keep_alive(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "20", "--keep-alive-s", "3")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL))
    worker = worker_for(redis_url, Wanted(SMOL), warmup_keep_alive_s=3.0, warmup_keep_margin_s=1.0)
    try:
        await worker.run_once()
        plan = await worker.reconcile("dmr-a")
        assert plan is not None
        assert plan.wake_at is not None
        assert 0 < plan.wake_at - time.time() <= 2.1  # keep_alive 3 s minus the 1 s margin

        async def refreshed() -> bool:
            await worker.reconcile("dmr-a")
            return any(s.kind is StepKind.REFRESH for _, s in worker.steps_done)

        await wait_for(refreshed, timeout_s=10, what="a refresh before keep_alive runs out")
    finally:
        await worker.close()
    counters = (await emulator_state(emulator.url))["counters"]
    assert (counters["loads_started"], counters["evictions"]) == (1, 0)


async def test_configure_of_a_model_the_endpoint_lacks_is_pulled_when_asked(
    procs: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "20", "--pull-time-ms", "50")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL))
    off = worker_for(redis_url, Wanted(GEMMA))
    try:
        await off.run_once()
    finally:
        await off.close()
    assert await requests_to(emulator.url, "/models/create") == []
    on = worker_for(redis_url, Wanted(GEMMA), warmup_pull=True)
    try:
        await on.run_once()
    finally:
        await on.close()
    assert len(await requests_to(emulator.url, "/models/create")) == 1
    assert [r["model_name"] for r in await ps(emulator.url)] == [GEMMA]
    (warm,) = await statestore.read_warm_states(redis)
    assert warm.phase is WarmPhase.WARM


async def test_a_failed_pull_backs_off(procs: ProcessFactory, redis: Redis, redis_url: str) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--pullable", "ai/smollm2")
    await statestore.write_endpoint_state(redis, dmr_state("dmr-a", emulator.url, SMOL))
    worker = worker_for(redis_url, Wanted(GEMMA), warmup_pull=True, warmup_backoff_initial_s=30.0)
    try:
        for _ in range(3):
            await worker.run_once()
    finally:
        await worker.close()
    assert len(await requests_to(emulator.url, "/models/create")) == 1  # never a hot loop
    (warm,) = await statestore.read_warm_states(redis)
    assert warm.phase is WarmPhase.FAILED
    assert "404" in str(warm.last_error)


async def test_openai_compatible_servers_get_a_one_token_completion(
    procs: ProcessFactory, redis: Redis, redis_url: str
) -> None:
    emulator = procs.emulator("--models", "ai/smollm2", "--load-time-ms", "20")
    state = dmr_state("oai", emulator.url + "/engines", SMOL, type_="openai-compatible", version=None)
    await statestore.write_endpoint_state(redis, state)
    worker = worker_for(redis_url, Wanted(SMOL))
    try:
        await worker.run_once()
    finally:
        await worker.close()
    (call,) = await requests_to(emulator.url, "/engines/v1/chat/completions")
    assert call["body"]["max_tokens"] == 1
    assert "x-preload-only" not in {k.lower() for k in call["headers"]}
    (warm,) = await statestore.read_warm_states(redis)
    assert (warm.phase, warm.method) == (WarmPhase.WARM, "completion")


async def test_warm_states_of_another_version_are_skipped(redis: Redis) -> None:
    good = WarmState(endpoint="e", model=SMOL, phase=WarmPhase.WARM)
    await statestore.write_warm_state(redis, good)
    old = {"endpoint": "e", "model": GEMMA, "phase": "warming"}  # a phase this version no longer has
    await redis.set(keys.warm_state("e", GEMMA), json.dumps(old))
    await redis.zadd(keys.WARM_INDEX, {keys.warm_member("e", GEMMA): time.time()})
    assert [w.model for w in await statestore.read_warm_states(redis)] == [SMOL]


async def test_a_new_routable_period_starts_afresh(redis_url: str) -> None:
    worker = worker_for(redis_url, Wanted(SMOL, WarmPolicy.PRELOAD))
    try:
        up = dmr_state("e", "http://127.0.0.1:9", SMOL)
        worker.on_event(Event(kind=EventKind.ENDPOINT_ADDED, endpoint="e", state=up))
        mem = worker._memory[("e", SMOL)] = Memory(failures=3, next_retry_at=time.time() + 100, preloaded=True)
        down = up.model_copy(update={"status": EndpointStatus.OFFLINE})
        worker.on_event(Event(kind=EventKind.STATUS_CHANGED, endpoint="e", state=down))
        assert (mem.failures, mem.preloaded) == (3, True)
        worker.on_event(Event(kind=EventKind.STATUS_CHANGED, endpoint="e", state=up))
        # `preload` loads again, and the last period's backoff is gone.
        assert (mem.failures, mem.next_retry_at, mem.preloaded) == (0, 0.0, False)
    finally:
        await worker.close()
