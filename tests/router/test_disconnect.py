"""A client that goes away: the upstream request is cancelled at once, except while the model is loading
(DMR aborts a load whose client left), where the router waits for the first byte and only then closes.
Observed at the emulator: its request log records `disconnected` / `disconnected_during_load`, its
counters record loads aborted and completed."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import ProcessFactory, wait_for
from tests.router.support import MODEL, Emu, EmuSpec, build_stack, chat, endpoints_status, wait_routable

CHAT = "/engines/v1/chat/completions"


async def first_events(resp: aiohttp.ClientResponse, n: int) -> list[str]:
    out: list[str] = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            out.append(line[6:])
            if len(out) >= n:
                break
    return out


async def only_record(emu: Emu) -> dict[str, Any]:
    (record,) = await emu.requests()
    return record


async def disconnected(emu: Emu) -> bool:
    records = await emu.requests()
    return bool(records) and all(r["disconnected"] for r in records)


async def test_client_leaving_mid_stream_cancels_the_upstream_stream(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    # 40 events, 250 ms apart: the whole stream would take 10 s.
    stack = build_stack(
        procs, tmp_path, redis_url, [EmuSpec("e1", args=("--chunks", "40", "--chunk-interval-ms", "250"))]
    )
    e1 = stack.emu("e1")
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        resp = await http.post(CHAT, json=chat(stream=True))
        assert resp.status == 200
        assert len(await first_events(resp, 2)) == 2
        resp.close()  # the client goes away
        await wait_for(lambda: disconnected(e1), timeout_s=5, what="the emulator to see its client go away")
    state = await e1.state()
    assert state["counters"]["streams_completed"] == 0
    await wait_for(
        lambda: endpoints_status(stack.url)["e1"]["in_flight"] == 0, timeout_s=5, what="the slot to be released"
    )


async def send_then_leave(http: aiohttp.ClientSession, emu: Emu, body: dict[str, Any]) -> dict[str, Any]:
    """Send a request, wait until the emulator has it, then go away (close the connection); its record."""
    before = len(await emu.requests())
    task = asyncio.create_task(http.post(CHAT, json=body))

    async def arrived() -> dict[str, Any] | None:
        records = await emu.requests()
        return records[before] if len(records) > before else None

    record: dict[str, Any] | None = await wait_for(arrived, timeout_s=10, what="the request to reach the emulator")
    assert record is not None
    task.cancel()  # the client gives up: aiohttp closes its connection
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return record


async def record_of(emu: Emu, record_id: int) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in await emu.requests() if r["id"] == record_id)
    return found


async def test_client_leaving_before_the_first_byte_of_a_loaded_model_cancels_at_once(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    stack = build_stack(procs, tmp_path, redis_url, [EmuSpec("e1")])
    e1 = stack.emu("e1")
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post(CHAT, json=chat()) as resp:  # loads the model
            assert resp.status == 200
        await wait_routable(stack.url, ["e1"], loaded=True)  # the router's table says it is loaded
        # The model is loaded but the answer takes 20 s to start (a long prompt, say).
        await e1.configure(first_byte_delay_ms=20_000)
        record = await send_then_leave(http, e1, chat())

        async def cancelled() -> bool:
            return bool((await record_of(e1, record["id"]))["disconnected"])

        # Well before the first byte would have come: the router cancelled the upstream request.
        await wait_for(cancelled, timeout_s=8, what="the emulator to see the router go away")
    final = await record_of(e1, record["id"])
    assert not final["disconnected_during_load"]
    assert final["status"] is None


async def test_client_leaving_during_a_model_load_lets_the_load_finish(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    # A 3 s load; replies stream slowly so the router's close after the first byte is seen mid-stream.
    args = ("--load-time-ms", "3000", "--chunk-interval-ms", "500")
    stack = build_stack(procs, tmp_path, redis_url, [EmuSpec("e1", args=args)])
    e1 = stack.emu("e1")

    # The emulator itself aborts a load whose only client leaves (what DMR does): checked directly first.
    async with aiohttp.ClientSession(base_url=e1.url) as direct:
        await send_then_leave_direct(direct, e1)
    await wait_for(
        lambda: counter(e1, "loads_aborted"), timeout_s=10, what="the emulator to abort the load of a direct client"
    )
    await e1.reset()

    async with aiohttp.ClientSession(base_url=stack.url) as http:
        record = await send_then_leave(http, e1, chat(stream=True))
        assert (await e1.state())["counters"]["loads_completed"] == 0  # it left while the model was loading
        await wait_for(lambda: counter(e1, "loads_completed"), timeout_s=15, what="the load to complete")

        async def closed_after_first_byte() -> bool:
            return bool((await record_of(e1, record["id"]))["disconnected"])

        await wait_for(closed_after_first_byte, timeout_s=10, what="the router to close after the first byte")
    state = await e1.state()
    assert state["counters"]["loads_aborted"] == 0
    assert state["counters"]["streams_completed"] == 0  # closed after the first byte, not read to the end
    assert MODEL in state["loaded"]
    final = await record_of(e1, record["id"])
    assert not final["disconnected_during_load"]


async def send_then_leave_direct(http: aiohttp.ClientSession, emu: Emu) -> None:
    task = asyncio.create_task(http.post(CHAT, json=chat(stream=True)))
    await wait_for(lambda: counter(emu, "loads_started"), timeout_s=10, what="the load to start")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def counter(emu: Emu, name: str) -> int:
    value: int = (await emu.state())["counters"][name]
    return value
