"""The state behind routing goes away: Redis killed and restarted, the health worker killed.

The router routes from its in-memory table, so neither may cost a request: without Redis it keeps its last
snapshot; without the health worker the states expire and the router routes on what is left (unknown
endpoints as the last resort) and on what requests tell it: an endpoint that goes down meanwhile is marked down
by the first request that fails to connect, which fails over.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.load import Load
from tests.faults.support import fault_stack, measure, record
from tests.harness import ProcessFactory, RedisServer, wait_for
from tests.router.support import endpoints_status, get_json, start_health, wait_routable

pytestmark = pytest.mark.faults

OUTAGE_OKS = 16  # good answers served while the fault is on: the router kept working, not merely survived


def _redis_connected(router_url: str) -> bool:
    return bool(get_json(f"{router_url}/internal/status")["redis"]["connected"])


async def _serving(load: Load) -> None:
    """Until the load has had OUTAGE_OKS good answers from now on."""
    since = time.monotonic()
    await wait_for(lambda: load.oks_since(since) >= OUTAGE_OKS, timeout_s=30, what="answers during the fault")


async def test_redis_killed_and_restarted(procs: ProcessFactory, tmp_path: Path, own_redis: RedisServer) -> None:
    stack = fault_stack(procs, tmp_path, own_redis.url)
    loads: list[Load] = []

    async def kill() -> None:
        own_redis.popen.kill()
        await asyncio.to_thread(own_redis.popen.wait, 5)
        await wait_for(lambda: not _redis_connected(stack.url), timeout_s=20, what="the router to lose Redis")

    async def restart() -> None:
        await asyncio.to_thread(own_redis.restart)
        await wait_for(lambda: _redis_connected(stack.url), timeout_s=20, what="the router to reconnect")
        await wait_routable(stack.url, ["e1", "e2"])  # the health worker wrote the new, empty Redis again

    async def during_outage() -> None:
        await kill()
        await _serving(loads[0])  # while Redis is down: the router answers from its last snapshot

    figures, _ = await measure(stack.url, during_outage, restart, on_start=loads.append)
    record("redis-server killed (SIGKILL) and restarted empty", figures)
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == 0
    assert stack.health is not None
    assert stack.health.alive()  # the health worker rode the outage out too


async def test_health_worker_killed(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = fault_stack(procs, tmp_path, redis_url)
    assert stack.health is not None
    health = stack.health
    e1 = stack.emu("e1")
    loads: list[Load] = []

    def expired() -> bool:
        status = endpoints_status(stack.url)
        return not status["e1"]["known"] and not status["e2"]["known"]

    def e1_marked_down() -> bool:
        return bool(endpoints_status(stack.url)["e1"]["marked_down"])

    async def kill() -> None:
        health.kill()
        await wait_for(expired, timeout_s=30, what="the endpoints' states to expire")
        await _serving(loads[0])  # every state has expired: the router still routes, on what it last knew
        # Now e1 goes down, and no health worker will say so: the requests that meet it tell the router.
        await e1.fault(mode="refuse")
        await wait_for(e1_marked_down, timeout_s=30, what="the router to mark e1 down from a failed request")
        await _serving(loads[0])
        await e1.fault(mode="none")

    async def restart() -> None:
        start_health(procs, redis_url, tmp_path, stack.config)
        await wait_routable(stack.url, ["e1", "e2"])

    figures, _ = await measure(stack.url, kill, restart, on_start=loads.append)
    record(
        "the health worker killed (SIGKILL): every state expires, then an endpoint goes down; restarted after",
        figures,
    )
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == 0
