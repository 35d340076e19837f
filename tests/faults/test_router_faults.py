"""The router itself: SIGTERM during 100 open streams, and 1,000 clients that go away mid-request.

SIGTERM: the router stops accepting, lets open streams run for `PIER_DRAIN_TIMEOUT_S`, then closes what is
left. With a 1 s drain, streams longer than that are cut; with the default 30 s, they all finish.

Cancels: a client leaving is not an endpoint failing. Olla counted 23 such clients as failures, opened its
breaker and refused the next 78,000 requests. Here 1,000 leave (half before the headers, half mid-stream)
while a mixed load runs; no breaker may open, no endpoint be marked down, and the load loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.faults.load import CHAT, Figures, Load, Result, body
from tests.faults.support import circuits_closed_and_nothing_marked_down, fault_stack, record
from tests.harness import ProcessFactory, wait_for
from tests.router.support import start_router, wait_routable

pytestmark = pytest.mark.faults

OPEN_STREAMS = 100
LONG_STREAM_ARGS = ("--chunks", "40", "--chunk-interval-ms", "100", "--load-time-ms", "0", "--parallel", "128")


async def _open_stream(http: aiohttp.ClientSession, url: str, opened: list[int]) -> Result:
    """A stream read to its end; `opened` counts the streams that have had their first event."""
    started, events, done = time.monotonic(), 0, False
    try:
        async with http.post(url + CHAT, json=body(stream=True)) as resp:
            if resp.status != 200:
                return Result("stream", started, time.monotonic(), "failed", str(resp.status))
            async for raw in resp.content:
                if raw.startswith(b"data: "):
                    events += 1
                    if events == 1:
                        opened.append(1)
                    done = raw.strip() == b"data: [DONE]"
    except (aiohttp.ClientError, OSError) as exc:
        return Result("stream", started, time.monotonic(), "cut" if events else "failed", type(exc).__name__)
    outcome = "ok" if done else ("cut" if events else "failed")
    return Result("stream", started, time.monotonic(), outcome, "200" if done else "ended without [DONE]")


async def _sigterm_during_streams(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, drain_s: float
) -> tuple[Figures, float]:
    stack = fault_stack(
        procs,
        tmp_path,
        redis_url,
        router_extra={"PIER_DRAIN_TIMEOUT_S": str(drain_s)},
        emu_args=LONG_STREAM_ARGS,
        entry={"max_concurrent_requests": OPEN_STREAMS},  # DMR's profile allows 8 a piece
    )
    opened: list[int] = []
    connector = aiohttp.TCPConnector(limit=OPEN_STREAMS + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        tasks = [asyncio.create_task(_open_stream(http, stack.url, opened)) for _ in range(OPEN_STREAMS)]
        await wait_for(lambda: len(opened) >= OPEN_STREAMS, timeout_s=30, what="100 streams open")
        signalled = time.monotonic()
        stack.router.popen.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        await asyncio.to_thread(stack.router.popen.wait, drain_s + 15)
        exited = time.monotonic()
    assert stack.router.popen.returncode == 0, stack.router.output()[-2000:]
    # A new router on the same state answers: the time to recover is a restart's.
    router = start_router(procs, redis_url, stack.config)
    await wait_routable(router.url, ["e1", "e2"])
    async with aiohttp.ClientSession() as http, http.post(router.url + CHAT, json=body(stream=False)) as resp:
        assert resp.status == 200
    recovered = time.monotonic()
    figures = Figures.of(list(results), signalled, exited)
    return Figures(
        requests=figures.requests,
        lost_before_streaming=figures.lost_before_streaming,
        streams_cut=figures.streams_cut,
        left=0,
        recovery_s=round(recovered - exited, 2),
        saw=figures.saw,
    ), exited - signalled


async def test_sigterm_with_a_short_drain_cuts_the_open_streams(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    figures, took_s = await _sigterm_during_streams(procs, tmp_path, redis_url, drain_s=1.0)
    label = f"the router sent SIGTERM during {OPEN_STREAMS} open 4 s streams, drain 1 s (PIER_DRAIN_TIMEOUT_S=1)"
    record(label, figures)
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == OPEN_STREAMS  # every stream had more than the drain left: each was cut
    assert took_s < 10  # the drain is bounded: 1 s, then the router exits


async def test_sigterm_with_the_default_drain_lets_open_streams_finish(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    figures, took_s = await _sigterm_during_streams(procs, tmp_path, redis_url, drain_s=30.0)
    record(f"the router sent SIGTERM during {OPEN_STREAMS} open 4 s streams, drain 30 s (the default)", figures)
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == 0
    assert took_s < 20  # it exits when the streams are done, not at the end of the drain


async def _leave(http: aiohttp.ClientSession, url: str, rng: random.Random, mid_stream: bool) -> bool:
    """One request given up: before its headers (after a random few ms) or after its first event."""

    async def request() -> None:
        async with http.post(url + CHAT, json=body(stream=True)) as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: ") and mid_stream:
                    return  # leaving the block closes the connection mid-stream

    task = asyncio.create_task(request())
    if mid_stream:
        await task
        return True
    await asyncio.sleep(rng.uniform(0.01, 0.09))  # inside the emulator's 100 ms before its headers
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return True


async def test_a_thousand_clients_leaving_open_no_breaker(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    stack = fault_stack(procs, tmp_path, redis_url, router_extra={"PIER_CIRCUIT_THRESHOLD": "3"})
    for emu in stack.emus.values():
        await emu.configure(first_byte_delay_ms=100)
    rng = random.Random(12)
    load = Load(stack.url, clients=6).start()
    begun = time.monotonic()
    try:
        await wait_for(lambda: load.oks_since(begun) >= 6, timeout_s=30, what="the load to run")
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=60)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
            gate = asyncio.Semaphore(50)

            async def one(i: int) -> bool:
                async with gate:
                    return await _leave(http, stack.url, rng, mid_stream=i % 2 == 1)

            left = await asyncio.gather(*(one(i) for i in range(1000)))
        ended = time.monotonic()
        await wait_for(lambda: load.oks_since(ended) >= 8, timeout_s=30, what="answers after the cancels")
    finally:
        results = await load.stop()
    assert sum(left) == 1000
    # The 500 that left mid-stream had reached an emulator, which saw the router go away in turn (those that left
    # before the headers may have left while still waiting for a slot: the endpoint never saw them).
    disconnects = 0
    for emu in stack.emus.values():
        disconnects += (await emu.state())["counters"]["disconnects"]
    assert disconnects >= 500
    circuits_closed_and_nothing_marked_down(stack.url, ["e1", "e2"])
    figures = Figures.of(results, started, ended)
    record(
        "1,000 clients cancelled mid-flight (500 before the headers, 500 mid-stream); breaker threshold 3",
        Figures(
            requests=figures.requests + 1000,
            lost_before_streaming=figures.lost_before_streaming,
            streams_cut=figures.streams_cut,
            left=figures.left + 1000,
            recovery_s=figures.recovery_s,
            saw=f"{figures.saw}; 1,000 cancelled; no breaker opened, no endpoint marked down",
        ),
    )
    assert figures.lost_before_streaming == 0
    assert figures.streams_cut == 0
