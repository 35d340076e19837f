"""True streaming: every upstream SSE event reaches the client before the next one is even produced.

The emulator writes event k no earlier than `at + k * interval` (`at`: when it received the request; it
sleeps `interval` between events). So an event the client holds before `at + (k + 1) * interval` was relayed
before event k+1 existed: no buffering, no coalescing. The interval is long so the margin is large.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from tests.harness import ProcessFactory
from tests.router.support import EmuSpec, build_stack, chat

INTERVAL_S = 1.2


async def test_each_sse_event_reaches_the_client_before_the_next_is_produced(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    args = ("--chunks", "3", "--chunk-interval-ms", str(int(INTERVAL_S * 1000)), "--load-time-ms", "0")
    stack = build_stack(procs, tmp_path, redis_url, [EmuSpec("e1", args=args)])
    arrivals: list[tuple[float, str]] = []
    async with (
        aiohttp.ClientSession(base_url=stack.url) as http,
        http.post("/engines/v1/chat/completions", json=chat(stream=True)) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data: "):
                arrivals.append((time.time(), line[6:]))
    # role, three pieces, the finish chunk, [DONE]
    assert len(arrivals) == 6
    assert arrivals[-1][1] == "[DONE]"
    (record,) = await stack.emu("e1").requests()
    produced_no_earlier = [record["at"] + k * INTERVAL_S for k in range(len(arrivals))]
    for k in range(len(arrivals) - 1):
        arrived = arrivals[k][0]
        assert arrived < produced_no_earlier[k + 1], (
            f"event {k} reached the client {arrived - record['at']:.2f}s after the request reached the endpoint: "
            f"not before event {k + 1} could be produced ({(k + 1) * INTERVAL_S:.2f}s)"
        )
