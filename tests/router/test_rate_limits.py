"""Rate and concurrency limits on real routers: token buckets per client and global on every route family,
429 with `Retry-After` and `X-RateLimit-*`, trusted proxies deciding when `X-Forwarded-For` names the client,
and a per-key in-flight cap that holds a stream's slot until its end.

Buckets refill at one token per 50 s here, so no refill can happen during a test however slow the machine:
every count below is exact. Each test plays its own clients (distinct addresses or keys).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.harness import Proc, ProcessFactory, RedisServer, wait_for
from tests.router.support import EmuSpec, Stack, build_stack, chat, start_router

SLOW = {"PIER_RATE_LIMIT_PER_S": "0.02", "PIER_RATE_LIMIT_BURST": "3"}
KEY_ONE = "sk-pier-one-" + uuid.uuid4().hex  # max_concurrent 1
KEY_FAST = "sk-pier-fast-" + uuid.uuid4().hex  # its own bucket: 5
ANTHROPIC_BODY = {"model": "ai/smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    # Streams of 30 chunks 50 ms apart: long enough to hold a slot while the test looks.
    # Its own router has no limits (the build polls /internal/status); the limited routers below start once the
    # state in Redis is complete, and read it before they serve.
    spec = EmuSpec("e1", args=("--chunks", "30", "--chunk-interval-ms", "50"))
    return build_stack(module_procs, module_dir, module_redis.url, [spec])


@pytest.fixture(scope="module")
def limited(module_procs: ProcessFactory, stack: Stack) -> Proc:
    """Per-client buckets of 3, trusting 127.0.0.1 as a proxy: `X-Forwarded-For` plays the clients."""
    return start_router(module_procs, stack.redis_url, stack.config, **SLOW, PIER_TRUSTED_PROXIES="127.0.0.1")


@pytest.fixture(scope="module")
def untrusting(module_procs: ProcessFactory, stack: Stack) -> Proc:
    """A second router with the same limits that trusts no proxy."""
    return start_router(module_procs, stack.redis_url, stack.config, **SLOW)


@pytest.fixture(scope="module")
def global_router(module_procs: ProcessFactory, stack: Stack) -> Proc:
    return start_router(
        module_procs,
        stack.redis_url,
        stack.config,
        PIER_RATE_LIMIT_GLOBAL_PER_S="0.02",
        PIER_RATE_LIMIT_GLOBAL_BURST="4",
        PIER_RATE_LIMIT_PER_S="0.02",
        PIER_RATE_LIMIT_BURST="2",
        PIER_TRUSTED_PROXIES="127.0.0.1",
    )


@pytest.fixture(scope="module")
def keyed_router(module_procs: ProcessFactory, stack: Stack) -> Proc:
    keys = (
        f'[{{"name": "one", "key": "{KEY_ONE}", "max_concurrent": 1, "rate_per_s": 1000, "burst": 1000}},'
        f' {{"name": "fast", "key": "{KEY_FAST}", "rate_per_s": 0.02, "burst": 5}}]'
    )
    return start_router(
        module_procs,
        stack.redis_url,
        stack.config,
        PIER_ACCESS_CONTROL="true",
        PIER_API_KEYS=keys,
        PIER_RATE_LIMIT_PER_S="0.02",
        PIER_RATE_LIMIT_BURST="2",
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client_ip() -> str:
    """A fresh client address (TEST-NET-3), one bucket of its own."""
    n = uuid.uuid4().int
    return f"203.0.{(n >> 8) % 256}.{n % 256}"


FAMILIES: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("POST", "/v1/chat/completions", chat(), "openai"),
    ("GET", "/v1/models", None, "openai"),
    ("POST", "/engines/v1/chat/completions", chat(), "openai"),  # DMR
    ("GET", "/engines/ps", None, "openai"),
    ("POST", "/v1/messages", ANTHROPIC_BODY, "anthropic"),
    ("POST", "/anthropic/v1/messages", ANTHROPIC_BODY, "anthropic"),
    ("GET", "/olla/models", None, "openai"),
    ("POST", "/olla/dmr/v1/chat/completions", chat(), "openai"),
    ("GET", "/internal/status", None, "openai"),
    ("GET", "/nowhere", None, "openai"),  # even the 404s count
]


@pytest.mark.parametrize(("method", "path", "body", "shape"), FAMILIES)
async def test_every_family_is_limited_per_client(
    http: aiohttp.ClientSession, limited: Proc, method: str, path: str, body: dict[str, Any] | None, shape: str
) -> None:
    me = {"X-Forwarded-For": client_ip()}
    remaining: list[str] = []
    for _ in range(3):
        async with http.request(method, f"{limited.url}{path}", json=body, headers=me) as resp:
            assert resp.status in (200, 404), await resp.text()
            assert resp.headers["X-RateLimit-Limit"] == "3"
            remaining.append(resp.headers["X-RateLimit-Remaining"])
            await resp.read()
    assert remaining == ["2", "1", "0"]
    async with http.request(method, f"{limited.url}{path}", json=body, headers=me) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 40  # one token per 50 s
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert int(resp.headers["X-RateLimit-Reset"]) > 100  # three tokens to refill
        error = await resp.json()
    if shape == "anthropic":
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_error"
    else:
        assert error["error"]["code"] == "rate_limit_exceeded"
        assert error["error"]["type"] == "rate_limit_error"
    # Another client is not affected.
    async with http.request(method, f"{limited.url}{path}", json=body, headers={"X-Forwarded-For": client_ip()}) as r:
        assert r.status in (200, 404)


async def test_healthcheck_route_is_never_limited(http: aiohttp.ClientSession, limited: Proc) -> None:
    me = {"X-Forwarded-For": client_ip()}
    for _ in range(10):
        async with http.get(f"{limited.url}/internal/health", headers=me) as resp:
            assert resp.status == 200
            assert "X-RateLimit-Limit" not in resp.headers


async def test_a_stream_carries_the_rate_headers(http: aiohttp.ClientSession, limited: Proc) -> None:
    me = {"X-Forwarded-For": client_ip()}
    async with http.post(f"{limited.url}/v1/chat/completions", json=chat(stream=True), headers=me) as resp:
        assert resp.status == 200
        assert resp.headers["X-RateLimit-Remaining"] == "2"
        assert b"[DONE]" in await resp.read()


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
    http: aiohttp.ClientSession, untrusting: Proc, limited: Proc
) -> None:
    # The untrusting router sees 127.0.0.1 whatever X-Forwarded-For says: a new address per request buys
    # nothing. (A prefix of `Forwarded`/`X-Real-IP` games changes nothing either.)
    statuses = []
    for _ in range(4):
        headers = {"X-Forwarded-For": client_ip(), "Forwarded": f"for={client_ip()}", "X-Real-IP": client_ip()}
        async with http.get(f"{untrusting.url}/v1/models", headers=headers) as resp:
            statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429]
    # The trusting router walks the chain from the right: a spoofed left-most entry does not make a new client.
    me = client_ip()
    statuses = []
    for _ in range(4):
        async with http.get(f"{limited.url}/v1/models", headers={"X-Forwarded-For": f"{client_ip()}, {me}"}) as r:
            statuses.append(r.status)
    assert statuses == [200, 200, 200, 429]


async def test_the_global_bucket_is_shared_by_every_client(http: aiohttp.ClientSession, global_router: Proc) -> None:
    statuses = []
    for _ in range(5):
        async with http.get(f"{global_router.url}/v1/models", headers={"X-Forwarded-For": client_ip()}) as resp:
            statuses.append(resp.status)
            if resp.status == 429:
                assert "global" in (await resp.json())["error"]["message"]
    assert statuses == [200, 200, 200, 200, 429]


async def test_a_keys_own_rate_limit(http: aiohttp.ClientSession, keyed_router: Proc) -> None:
    statuses = []
    for _ in range(6):
        async with http.get(f"{keyed_router.url}/v1/models", headers={"x-api-key": KEY_FAST}) as resp:
            statuses.append(resp.status)
            limit = resp.headers["X-RateLimit-Limit"]
    assert statuses == [200] * 5 + [429]
    assert limit == "5"
    # The openai SDK sees the 429 as its RateLimitError, with the headers it reads.
    with (
        openai.OpenAI(base_url=f"{keyed_router.url}/v1", api_key=KEY_FAST, max_retries=0, timeout=30) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.models.list()
    assert int(caught.value.response.headers["retry-after"]) >= 1


async def test_concurrency_limit_holds_a_streams_slot_until_its_end(
    http: aiohttp.ClientSession, keyed_router: Proc
) -> None:
    auth = {"Authorization": f"Bearer {KEY_ONE}"}
    url = f"{keyed_router.url}/v1/chat/completions"
    async with http.post(url, json=chat(stream=True), headers=auth) as stream:
        assert stream.status == 200
        await stream.content.readline()  # the stream is under way
        async with http.post(url, json=chat(), headers=auth) as second:
            assert second.status == 429
            assert (await second.json())["error"]["code"] == "concurrency_limit_exceeded"
            assert second.headers["Retry-After"] == "1"
        assert b"[DONE]" in await stream.read()

    async def slot_free() -> bool:
        async with http.post(url, json=chat(), headers=auth) as again:
            return again.status == 200

    await wait_for(slot_free, timeout_s=10, what="the stream's slot to be free again")


async def test_a_cancelled_stream_frees_its_slot(http: aiohttp.ClientSession, keyed_router: Proc) -> None:
    auth = {"Authorization": f"Bearer {KEY_ONE}"}
    url = f"{keyed_router.url}/v1/chat/completions"
    resp = await http.post(url, json=chat(stream=True), headers=auth)
    await resp.content.readline()
    resp.close()  # the client goes away mid-stream

    async def slot_free() -> bool:
        async with aiohttp.ClientSession() as fresh, fresh.post(url, json=chat(), headers=auth) as again:
            return again.status == 200

    await wait_for(slot_free, timeout_s=10, what="the cancelled stream's slot to be free")
