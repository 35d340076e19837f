"""Which rarely-changing routes a probe reads: a pure decision, and what the emulator sees in steady state."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from services.health.probe import FULL_READ_INTERVAL_S, Plan, plan_for
from shared.state import EndpointState, EndpointStatus
from tests.harness import ProcessFactory, wait_for
from tests.health.support import (
    endpoint_entry,
    health_env,
    read_state,
    start_emulator,
    start_health,
    wait_status,
    write_config,
)

HEALTHY = EndpointState(
    name="e",
    url="http://127.0.0.1:1",
    type="docker-model-runner",
    priority=1,
    status=EndpointStatus.HEALTHY,
    models=("ai/a:latest",),
    models_known=True,
)


@pytest.mark.parametrize(
    ("previous", "last_full", "now", "expected"),
    [
        (None, None, 100.0, Plan(full=True)),  # first probe
        (HEALTHY, None, 100.0, Plan(full=True)),  # never read in full (e.g. a new leader)
        (HEALTHY, 90.0, 100.0, Plan(full=False, known_models=("ai/a:latest",))),
        (HEALTHY, 100.0 - FULL_READ_INTERVAL_S, 100.0, Plan(full=True)),  # periodic refresh
        (HEALTHY.model_copy(update={"status": EndpointStatus.OFFLINE}), 99.0, 100.0, Plan(full=True)),  # after outage
        (HEALTHY.model_copy(update={"status": EndpointStatus.BUSY}), 99.0, 100.0, Plan(False, ("ai/a:latest",))),
        (HEALTHY.model_copy(update={"models_known": False}), 99.0, 100.0, Plan(full=False, known_models=None)),
    ],
)
def test_plan(previous: EndpointState | None, last_full: float | None, now: float, expected: Plan) -> None:
    assert plan_for(previous, last_full, now) == expected


async def test_steady_state_reads_listing_and_ps_only(
    procs: ProcessFactory, redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    emu = start_emulator(procs)
    config = write_config(tmp_path / "pier.yaml", endpoint_entry("emu", emu.url, interval="1s"))
    health = start_health(procs, health_env(redis_url, tmp_path, config))
    await wait_status(redis, "emu", EndpointStatus.HEALTHY, proc=health)

    async def probes(count: int) -> list[str]:
        paths = [r["path"] for r in await emu.worker_requests()]
        return paths if paths.count("/engines/v1/models") >= count else []

    paths = await wait_for(lambda: probes(4), timeout_s=20, what="4 probes")
    first_probe, steady = paths[:5], paths[5:]
    assert sorted(first_probe) == sorted(
        ["/engines/v1/models", "/models", "/engines/ps", "/engines/status", "/version"]
    )
    assert set(steady) == {"/engines/v1/models", "/engines/ps"}
    # A pull changes the listing: that probe reads /models again, and only that one.
    await emu.configure(models=["ai/smollm2", "ai/gemma3"])

    async def pulled_again() -> bool:
        return (await probes(0)).count("/models") == 2

    await wait_for(pulled_again, timeout_s=20, what="/models read after the listing changed")

    async def gemma_pulled() -> bool:
        state = await read_state(redis, "emu")
        return state is not None and "ai/gemma3:latest" in {m.name for m in state.pulled}

    await wait_for(gemma_pulled, timeout_s=10, what="gemma3 in the pulled inventory")
