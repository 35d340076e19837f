"""Every status from the matching emulator fault: one probe (`run_once`) of a real emulator process."""

from __future__ import annotations

import email.utils
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from services.health.settings import HealthSettings
from services.health.worker import HealthWorker
from shared import statestore
from shared.config import build_config
from shared.profiles import load_profiles
from shared.state import EndpointState, EndpointStatus
from tests.harness import ProcessFactory
from tests.health.support import endpoint_entry, read_state, start_emulator

BUSY_THRESHOLD_S = 0.25
TIMEOUT_S = 0.8


async def probe_once(redis: Redis, redis_url: str, tmp_path: Path, url: str) -> EndpointState:
    settings = HealthSettings(
        redis_url=redis_url,
        busy_threshold_s=BUSY_THRESHOLD_S,
        docker_discovery="off",
        health_id_file=tmp_path / "id",
        instance_id="once",
    )
    config = build_config({"endpoints": [endpoint_entry("emu", url, timeout=f"{TIMEOUT_S}s")]}, load_profiles())
    worker = HealthWorker(settings, redis=redis, config=config)
    try:
        (state,) = await worker.run_once()
    finally:
        await worker.close()
    stored = await read_state(redis, "emu")
    assert stored == state  # what the probe found is what readers see
    return state


CASES: list[tuple[str, dict[str, Any] | None, EndpointStatus, str | None]] = [
    ("no fault", None, EndpointStatus.HEALTHY, None),
    ("500", {"mode": "status", "status": 500}, EndpointStatus.UNHEALTHY, "HTTP 500: unable to load runner"),
    ("503", {"mode": "status", "status": 503}, EndpointStatus.UNHEALTHY, "HTTP 503"),
    ("llama.cpp loading", {"mode": "loading"}, EndpointStatus.UNHEALTHY, "Loading model"),
    (
        "garbage 200",
        {"mode": "status", "status": 200, "message": "<html>not DMR</html>", "paths": ["/engines/v1/models"]},
        EndpointStatus.UNHEALTHY,
        "garbage from /engines/v1/models",
    ),
    (
        # Valid JSON nested 10,000 deep: refused like garbage, not a RecursionError in the probe loop.
        "deep JSON 200",
        {
            "mode": "status",
            "status": 200,
            "message": '{"data":' + "[" * 10_000 + "]" * 10_000 + "}",
            "paths": ["/engines/v1/models"],
        },
        EndpointStatus.UNHEALTHY,
        "garbage from /engines/v1/models",
    ),
    ("401", {"mode": "status", "status": 401}, EndpointStatus.CONFIG_ERROR, "HTTP 401"),
    ("403", {"mode": "status", "status": 403}, EndpointStatus.CONFIG_ERROR, "HTTP 403"),
    ("429", {"mode": "status", "status": 429, "retry_after": 7}, EndpointStatus.RATE_LIMITED, "HTTP 429"),
    ("refused", {"mode": "refuse"}, EndpointStatus.OFFLINE, "connection refused"),
    ("reset", {"mode": "reset"}, EndpointStatus.OFFLINE, None),
    ("hang", {"mode": "hang"}, EndpointStatus.OFFLINE, f"timeout after {TIMEOUT_S:g}s"),
    ("dropped", {"mode": "drop"}, EndpointStatus.OFFLINE, None),
    ("slow", {"mode": "slow_first_byte", "delay_ms": 500}, EndpointStatus.BUSY, None),
]


@pytest.mark.parametrize(("case", "fault", "status", "error"), CASES, ids=[c[0] for c in CASES])
async def test_status_from_fault(
    case: str,
    fault: dict[str, Any] | None,
    status: EndpointStatus,
    error: str | None,
    procs: ProcessFactory,
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
) -> None:
    emu = start_emulator(procs)
    if fault is not None:
        await emu.fault(**fault)
    state = await probe_once(redis, redis_url, tmp_path, emu.url)
    assert state.status is status, state
    if error is not None:
        assert state.last_error is not None
        assert error in state.last_error
    if status.routable:
        assert state.models == ("ai/smollm2:latest",)
        assert state.version == "v1.2.6"
        assert state.last_success_at is not None
        assert state.latency_ms is not None
        if status is EndpointStatus.BUSY:
            assert state.latency_ms > BUSY_THRESHOLD_S * 1000
    else:
        assert state.last_success_at is None
        assert state.last_error
    assert state.consecutive_failures == (1 if status in (EndpointStatus.OFFLINE, EndpointStatus.UNHEALTHY) else 0)


async def test_rate_limited_honours_an_http_date(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    await emu.fault(mode="status", status=429, retry_after=email.utils.formatdate(time.time() + 40, usegmt=True))
    state = await probe_once(redis, redis_url, tmp_path, emu.url)
    assert state.status is EndpointStatus.RATE_LIMITED
    assert state.retry_after_until is not None
    assert 30 < state.retry_after_until - state.checked_at <= 41
    assert state.next_check_at == state.retry_after_until
    assert state.ttl_s > 40  # the state does not expire while we wait


async def test_full_inventory(procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path) -> None:
    emu = start_emulator(procs, "--models", "ai/smollm2,ai/gemma3:4b", "--load-time-ms", "0")
    async with aiohttp.ClientSession() as session:
        body = {"model": "ai/gemma3:4b", "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(f"{emu.url}/engines/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
    state = await probe_once(redis, redis_url, tmp_path, emu.url)
    assert state.status is EndpointStatus.HEALTHY
    assert set(state.models) == {"ai/smollm2:latest", "ai/gemma3:4b"}
    assert {m.name for m in state.pulled} == {"ai/smollm2:latest", "ai/gemma3:4b"}
    assert state.models_known
    assert state.pulled_known
    assert state.loaded_known
    assert [(m.name, m.loading) for m in state.loaded] == [("ai/gemma3:4b", False)]
    assert state.engines["llama.cpp"].startswith("Running")


async def test_old_dmr_without_ps_is_healthy(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """An old DMR: no /engines/ps or /version (404) and a listing of loaded models only (empty)."""
    emu = start_emulator(procs, "--no-ps", "--list-mode", "loaded")
    state = await probe_once(redis, redis_url, tmp_path, emu.url)
    assert state.status is EndpointStatus.HEALTHY
    assert state.models == ()
    assert state.models_known  # an empty listing is a listing
    assert not state.loaded_known
    assert state.loaded == ()
    assert state.version is None
    assert state.pulled_known
    assert [m.name for m in state.pulled] == ["ai/smollm2:latest"]


async def test_inventory_route_failure_is_not_an_outage(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    await emu.fault(mode="status", status=500, paths=["/engines/ps", "/models"])
    state = await probe_once(redis, redis_url, tmp_path, emu.url)
    assert state.status is EndpointStatus.HEALTHY
    assert not state.loaded_known  # nothing learnt yet: not known
    assert not state.pulled_known
    assert state.models == ("ai/smollm2:latest",)


async def test_each_probe_is_a_span_and_events_carry_its_traceparent(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    emu = start_emulator(procs)
    settings = HealthSettings(redis_url=redis_url, docker_discovery="off", health_id_file=tmp_path / "id")
    config = build_config({"endpoints": [endpoint_entry("emu", emu.url)]}, load_profiles())
    worker = HealthWorker(settings, redis=redis, config=config, tracer_provider=provider)
    try:
        await worker.run_once()
    finally:
        await worker.close()
        provider.shutdown()
    (span,) = exporter.get_finished_spans()
    assert span.name == "health probe"
    assert span.attributes is not None
    assert span.attributes["pier.endpoint.name"] == "emu"
    assert span.attributes["pier.endpoint.status"] == "healthy"
    (event,) = [e for _, e in await statestore.read_events(redis, "0-0")]
    assert span.context is not None
    assert event.traceparent is not None
    assert event.traceparent.startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
