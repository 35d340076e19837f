"""Endpoint concurrency limits (Olla parses them and ignores them; Pier applies them).

A full endpoint is skipped for the next candidate; when every candidate is full the request waits a bounded
time for a slot, then gets a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.harness import ProcessFactory, wait_for
from tests.router.support import EmuSpec, build_stack, chat, endpoints_status, get_json, read_sse

CHAT = "/engines/v1/chat/completions"
ONE = {"max_concurrent_requests": 1}
SLOW = ("--chunk-interval-ms", "600")  # a stream of about 4 s


async def test_a_full_endpoint_is_skipped(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    specs = [EmuSpec("e1", 100, SLOW, ONE), EmuSpec("e2", 50)]
    stack = build_stack(procs, tmp_path, redis_url, specs)
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post(CHAT, json=chat(stream=True)) as held:
            assert held.headers["X-Pier-Endpoint"] == "e1"
            assert endpoints_status(stack.url)["e1"]["in_flight"] == 1
            async with http.post(CHAT, json=chat()) as resp:
                assert resp.status == 200
                assert resp.headers["X-Pier-Endpoint"] == "e2"  # e1 is at its limit of 1
                assert resp.headers["X-Pier-Attempts"] == "1"
            await read_sse(held)
        # e1 has room again.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.headers["X-Pier-Endpoint"] == "e1"


async def test_when_all_are_full_the_request_waits_then_gets_503(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    args = ("--chunks", "30", "--chunk-interval-ms", "500")  # 15 s: longer than the wait
    stack = build_stack(
        procs, tmp_path, redis_url, [EmuSpec("e1", 100, args, ONE)], router_extra={"PIER_CAPACITY_WAIT_S": "1"}
    )
    async with aiohttp.ClientSession(base_url=stack.url) as http, http.post(CHAT, json=chat(stream=True)) as held:
        assert held.status == 200
        started = time.monotonic()
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            error = (await resp.json())["error"]
        waited = time.monotonic() - started
        held.close()
    assert error["code"] == "capacity_exceeded"
    assert waited >= 0.9  # it waited for a slot before giving up
    assert len(await stack.emu("e1").requests()) == 1  # the second request never reached the endpoint


async def test_a_waiting_request_takes_the_slot_when_it_frees(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    stack = build_stack(
        procs, tmp_path, redis_url, [EmuSpec("e1", 100, SLOW, ONE)], router_extra={"PIER_CAPACITY_WAIT_S": "30"}
    )
    async with aiohttp.ClientSession(base_url=stack.url) as http:

        async def second() -> tuple[int, str]:
            async with http.post(CHAT, json=chat()) as resp:
                await resp.read()
                return resp.status, resp.headers["X-Pier-Endpoint"]

        async with http.post(CHAT, json=chat(stream=True)) as held:
            assert held.status == 200
            waiting = asyncio.create_task(second())
            await wait_for(
                lambda: get_json(f"{stack.url}/internal/status")["runtime"]["waiting_for_capacity"] == 1,
                timeout_s=10,
                what="the second request to wait for e1's only slot",
            )
            assert not waiting.done()
            first_events = await read_sse(held)
        assert await waiting == (200, "e1")
    assert first_events[-1] == "[DONE]"
    assert len(await stack.emu("e1").requests()) == 2
