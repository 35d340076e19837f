"""Fail-over to an endpoint at its concurrency limit waits for its slot (bounded by PIER_CAPACITY_WAIT_S) rather
than giving up: the request had not started, so a short wait is better than an error."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.harness import ProcessFactory, wait_for
from tests.router.support import EmuSpec, build_stack, chat, endpoints_status

CHAT = "/engines/v1/chat/completions"
ONE_AT_A_TIME = {"max_concurrent_requests": 1}


async def test_failover_waits_for_a_full_endpoint(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    specs = [EmuSpec("busy", priority=100, entry=ONE_AT_A_TIME), EmuSpec("broken", priority=50, entry=ONE_AT_A_TIME)]
    stack = build_stack(procs, tmp_path, redis_url, specs)
    busy, broken = stack.emu("busy"), stack.emu("broken")
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post(CHAT, json=chat()) as resp:  # the model loaded on the preferred endpoint
            assert resp.status == 200
        await busy.configure(first_byte_delay_ms=1500)
        await broken.fault(mode="reset", count=1)
        slow = asyncio.create_task(http.post(CHAT, json=chat()))  # takes the preferred endpoint's one slot
        await wait_for(
            lambda: endpoints_status(stack.url)["busy"]["in_flight"] == 1, timeout_s=10, what="the slot taken"
        )
        # The next request finds it full, goes to the other, which resets the connection: it waits for the slot.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers.get("X-Emulator-Name") == "busy"
        first = await slow
        assert first.status == 200
        first.release()
    assert (await broken.state())["counters"]["faults_applied"] == 1  # it did try the other one first
