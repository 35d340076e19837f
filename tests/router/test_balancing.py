"""Priority tiers and each balancer's distribution, counted by X-Pier-Endpoint and at the emulators.

One set of emulators for the module (a, b, c at priority 100; d at 10) probed by one health worker; each test
starts its own router with the balancer it checks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.harness import Proc, ProcessFactory, RedisServer
from tests.router.support import (
    MODEL,
    Emu,
    chat,
    endpoint,
    start_emulator,
    start_health,
    start_router,
    wait_routable,
    write_config,
)

CHAT = "/engines/v1/chat/completions"
TOP = ("a", "b", "c")


@dataclass
class Fleet:
    emus: dict[str, Emu]
    config: Path
    redis_url: str
    health: Proc


@pytest.fixture(scope="module")
def fleet(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Fleet:
    emus = {name: start_emulator(module_procs, name) for name in (*TOP, "d")}
    entries = [endpoint(name, emus[name].url, 100) for name in TOP] + [endpoint("d", emus["d"].url, 10)]
    config = write_config(module_dir / "fleet.yaml", entries)
    health = start_health(module_procs, module_redis.url, module_dir, config)
    return Fleet(emus, config, module_redis.url, health)


async def router_for(procs: ProcessFactory, fleet: Fleet, balancer: str) -> Proc:
    for emu in fleet.emus.values():
        await emu.reset()
    # Loaded on the whole top tier (DMR's own `_configure` preload, which the request counts below leave out):
    # warm endpoints go before cold ones of their tier, so the balancer's share is measured among equals.
    async with aiohttp.ClientSession() as http:
        for name in TOP:
            url = f"{fleet.emus[name].url}/engines/_configure"
            async with http.post(url, json={"model": MODEL}) as resp:
                assert resp.status == 202, await resp.text()
    # Affinity off: these identical chats share one conversation prefix, which affinity (on by default) would
    # keep on one endpoint by design; the balancers are what is measured here (affinity: test_affinity*).
    router = start_router(procs, fleet.redis_url, fleet.config, PIER_LOAD_BALANCER=balancer, PIER_AFFINITY="false")
    await wait_routable(router.url, [*TOP], loaded=True)
    await wait_routable(router.url, ["d"])
    return router


async def served_by(http: aiohttp.ClientSession, n: int) -> list[str]:
    out = []
    for _ in range(n):
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200, await resp.text()
            out.append(resp.headers["X-Pier-Endpoint"])
            await resp.read()
    return out


async def emulator_counts(fleet: Fleet) -> Counter[str]:
    return Counter({name: len(await emu.requests()) for name, emu in fleet.emus.items()})


async def test_round_robin_rotates_evenly_inside_the_top_tier(procs: ProcessFactory, fleet: Fleet) -> None:
    router = await router_for(procs, fleet, "round-robin")
    async with aiohttp.ClientSession(base_url=router.url) as http:
        order = await served_by(http, 30)
    assert Counter(order) == {"a": 10, "b": 10, "c": 10}
    # A stable rotation: every window of three consecutive requests covers the tier.
    assert all(set(order[i : i + 3]) == set(TOP) for i in range(len(order) - 2))
    assert await emulator_counts(fleet) == {"a": 10, "b": 10, "c": 10, "d": 0}


async def test_priority_balancer_is_random_inside_the_tier_and_never_below_it(
    procs: ProcessFactory, fleet: Fleet
) -> None:
    router = await router_for(procs, fleet, "priority")
    async with aiohttp.ClientSession(base_url=router.url) as http:
        order = await served_by(http, 60)
    counts = Counter(order)
    assert set(counts) == set(TOP)  # d (priority 10) never gets a request while the top tier can serve
    # Uniform over three: each share below 5 of 60 has a probability of about 1e-5.
    assert min(counts.values()) >= 5, counts
    assert await emulator_counts(fleet) == counts + Counter({"d": 0})


async def test_least_connections_prefers_the_idle_endpoint(procs: ProcessFactory, fleet: Fleet) -> None:
    router = await router_for(procs, fleet, "least-connections")
    for name in TOP:
        await fleet.emus[name].configure(chunk_interval_ms=1000)
    try:
        async with aiohttp.ClientSession(base_url=router.url) as http:
            # Two long streams in flight, each on a different endpoint (fewest in flight).
            held = [await http.post(CHAT, json=chat(stream=True)) for _ in range(2)]
            busy = {resp.headers["X-Pier-Endpoint"] for resp in held}
            assert len(busy) == 2
            (idle,) = set(TOP) - busy
            # Short requests meanwhile all go to the one endpoint with nothing in flight.
            assert await served_by(http, 6) == [idle] * 6
            for resp in held:
                await resp.read()
                resp.release()
            # Nothing in flight anywhere: ties rotate over the whole tier.
            assert set(await served_by(http, 6)) == set(TOP)
    finally:
        for name in TOP:
            await fleet.emus[name].configure(chunk_interval_ms=10)
