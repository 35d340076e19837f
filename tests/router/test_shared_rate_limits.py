"""`PIER_RATE_LIMIT_SHARED=true`: two real routers on one real Redis share their token buckets (per client and
global); no Redis key holds anything a client sent; with Redis killed the limits hold locally, and no request
waits on the dead Redis.

Buckets refill at one token per 50 s: counts are exact however slow the machine.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from tests.harness import Proc, ProcessFactory, RedisServer, start_redis
from tests.router.support import EmuSpec, Stack, build_stack, start_router

SHARED = {
    "PIER_RATE_LIMIT_SHARED": "true",
    "PIER_RATE_LIMIT_PER_S": "0.02",
    "PIER_RATE_LIMIT_BURST": "3",
    "PIER_TRUSTED_PROXIES": "127.0.0.1",
}


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")])


@pytest.fixture(scope="module")
def pair(module_procs: ProcessFactory, stack: Stack) -> tuple[Proc, Proc]:
    return (
        start_router(module_procs, stack.redis_url, stack.config, **SHARED),
        start_router(module_procs, stack.redis_url, stack.config, **SHARED),
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client_ip() -> str:
    n = uuid.uuid4().int
    return f"203.0.{(n >> 8) % 256}.{n % 256}"


async def statuses(http: aiohttp.ClientSession, urls: list[str], headers: dict[str, str]) -> list[int]:
    out = []
    for url in urls:
        async with http.get(f"{url}/v1/models", headers=headers) as resp:
            out.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
    return out


async def test_replicas_share_a_clients_bucket(http: aiohttp.ClientSession, pair: tuple[Proc, Proc]) -> None:
    a, b = pair
    me = {"X-Forwarded-For": client_ip()}
    assert await statuses(http, [a.url, b.url, a.url, b.url, a.url], me) == [200, 200, 200, 429, 429]
    assert await statuses(http, [b.url], {"X-Forwarded-For": client_ip()}) == [200]  # others unaffected


async def test_redis_keys_hold_nothing_a_client_sent(
    http: aiohttp.ClientSession, pair: tuple[Proc, Proc], stack: Stack
) -> None:
    odd = "198.51.100.77"
    await statuses(http, [pair[0].url], {"X-Forwarded-For": odd})
    redis = Redis.from_url(stack.redis_url)
    try:
        names = [name.decode() async for name in redis.scan_iter(match="pier:ratelimit:*")]
    finally:
        await redis.aclose()
    assert names
    for name in names:
        assert re.fullmatch(r"pier:ratelimit:client:[0-9a-f]{32}", name), name
        assert odd not in name


async def test_limits_hold_locally_while_redis_is_down(
    http: aiohttp.ClientSession, module_procs: ProcessFactory, stack: Stack, tmp_path: Path
) -> None:
    own = start_redis(workdir=tmp_path)  # this router's own Redis, to kill without touching the others
    try:
        router = start_router(
            module_procs,
            own.url,
            stack.config,
            **SHARED,
            PIER_RATE_LIMIT_GLOBAL_PER_S="0.02",
            PIER_RATE_LIMIT_GLOBAL_BURST="100",
        )
        me = {"X-Forwarded-For": client_ip()}
        assert await statuses(http, [router.url], me) == [200]  # one token taken in Redis
        own.stop()
        started = time.monotonic()
        # The local buckets start full: three more, then refused; every answer quick, none a 500.
        assert await statuses(http, [router.url] * 4, me) == [200, 200, 200, 429]
        assert time.monotonic() - started < 5.0
        assert router.alive()
        assert "limiting locally" in router.output()
    finally:
        own.stop()
