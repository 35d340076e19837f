"""Lazy loading, in-use marking, keep-alive eviction, max runners, and aborted loads."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, chat_body, ps
from tests.harness import wait_for


async def post_chat(http: aiohttp.ClientSession, url: str, model: str = "ai/smollm2", **extra: Any) -> str:
    async with http.post(f"{url}/engines/v1/chat/completions", json=chat_body(model, **extra)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def test_first_request_waits_for_the_load(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    # Long enough that the first poll sees the load even on a busy machine.
    emu = await start_emulator(load_time_ms=1500)
    request = asyncio.create_task(post_chat(http, emu.url))
    entries = await wait_for(lambda: ps(http, emu), what="the runner to appear")
    assert entries[0]["loading"] is True
    assert "in_use" not in entries[0]
    assert not request.done()
    assert "Hello from dmr" in await request
    entries = await ps(http, emu)
    assert "loading" not in entries[0]
    counters = (await admin_get(http, emu, "state"))["counters"]
    assert counters["loads_started"] == counters["loads_completed"] == 1


async def test_concurrent_requests_share_one_load(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(load_time_ms=200)
    replies = await asyncio.gather(*(post_chat(http, emu.url) for _ in range(4)))
    assert len(replies) == 4
    counters = (await admin_get(http, emu, "state"))["counters"]
    assert counters["loads_started"] == 1
    assert counters["inference_requests"] == 4


async def test_in_use_while_serving(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=20, chunk_interval_ms=50)
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True)) as resp:
        await resp.content.readline()  # the stream has started
        entries = await ps(http, emu)
        assert entries[0].get("in_use") is True
        await resp.read()

    async def idle() -> bool:
        return "in_use" not in (await ps(http, emu))[0]

    await wait_for(idle, what="the runner to be released")


async def test_keep_alive_evicts_idle_runners(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(keep_alive_s=0.1)
    await post_chat(http, emu.url)

    async def gone() -> bool:
        return await ps(http, emu) == []

    await wait_for(gone, what="the idle runner to be evicted")
    assert (await admin_get(http, emu, "state"))["counters"]["evictions"] == 1
    await post_chat(http, emu.url)  # loads again
    assert (await admin_get(http, emu, "state"))["counters"]["loads_started"] == 2


async def test_preloaded_runners_expire_after_keep_alive_and_count_the_peak(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(keep_alive_s=1.0, models=["ai/smollm2", "ai/gemma3"])
    preload = {"X-Preload-Only": "true"}
    for model in ("ai/smollm2", "ai/gemma3"):
        async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(model), headers=preload) as r:
            assert (r.status, await r.read()) == (200, b"")
    assert (await admin_get(http, emu, "state"))["counters"]["peak_runners"] == 2

    async def gone() -> bool:
        return not await ps(http, emu)

    await wait_for(gone, timeout_s=10, what="both idle runners to expire after keep_alive 1 s")
    state = await admin_get(http, emu, "state")
    assert (state["counters"]["evictions"], state["counters"]["peak_runners"]) == (2, 2)


async def test_configure_keep_alive_per_model(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(keep_alive_s=300, models=["ai/smollm2", "ai/gemma3"], max_runners=4)
    body = {"model": "ai/gemma3", "keep_alive": "0"}
    async with http.post(f"{emu.url}/engines/_configure", json=body) as resp:
        assert resp.status == 202
    await post_chat(http, emu.url, "ai/smollm2")
    await post_chat(http, emu.url, "ai/gemma3")

    async def only_smollm2() -> bool:
        return [e["model_name"] for e in await ps(http, emu)] == ["ai/smollm2"]

    # keep_alive 0 unloads gemma3 as soon as it is idle; smollm2 keeps the 300 s default.
    await wait_for(only_smollm2, what="gemma3 to be unloaded")


async def test_max_runners_evicts_least_recently_used(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(max_runners=2, models=["ai/smollm2", "ai/gemma3", "ai/qwen3"])
    await post_chat(http, emu.url, "ai/smollm2")
    await post_chat(http, emu.url, "ai/gemma3")
    await post_chat(http, emu.url, "ai/smollm2")  # gemma3 is now the least recently used
    await post_chat(http, emu.url, "ai/qwen3")
    assert sorted(e["model_name"] for e in await ps(http, emu)) == ["ai/qwen3", "ai/smollm2"]
    counters = (await admin_get(http, emu, "state"))["counters"]
    assert counters["evictions"] == 1
    assert counters["peak_runners"] == 2  # the high watermark never passes the limit


async def test_full_and_busy_blocks_until_a_runner_frees(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(max_runners=1, models=["ai/smollm2", "ai/gemma3"], chunks=20, chunk_interval_ms=30)
    order: list[str] = []

    async def quick_gemma() -> None:
        await post_chat(http, emu.url, "ai/gemma3")
        order.append("ai/gemma3")

    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True)) as resp:
        await resp.content.readline()  # smollm2 holds the only runner slot
        gemma = asyncio.create_task(quick_gemma())

        async def gemma_received() -> bool:
            return any(r["body"]["model"] == "ai/gemma3" for r in await admin_get(http, emu, "requests"))

        await wait_for(gemma_received, what="the gemma3 request to arrive")
        # Not blocked, the quick gemma3 reply would beat this 600 ms stream; blocked, it must wait for it.
        await resp.read()
        order.append("ai/smollm2")
    await gemma
    assert order == ["ai/smollm2", "ai/gemma3"]
    assert [e["model_name"] for e in await ps(http, emu)] == ["ai/gemma3"]


async def test_client_leaving_during_load_aborts_it(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(load_time_ms=5000)
    request = asyncio.create_task(post_chat(http, emu.url))
    await wait_for(lambda: ps(http, emu), what="the load to start")
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request

    async def aborted() -> dict[str, Any] | None:
        state = await admin_get(http, emu, "state")
        return state if state["counters"]["loads_aborted"] == 1 else None

    state = await wait_for(aborted, what="the load to be aborted")
    assert state["loaded"] == []
    assert state["runners"] == []
    assert state["counters"]["loads_completed"] == 0
    [chat] = [r for r in await admin_get(http, emu, "requests") if r["method"] == "POST"]
    assert chat["disconnected"] is True
    assert chat["disconnected_during_load"] is True
    assert chat["finished"] is False
    assert chat["status"] is None


async def test_load_survives_while_another_client_waits(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(load_time_ms=2000)
    leaving = asyncio.create_task(post_chat(http, emu.url))
    await wait_for(lambda: ps(http, emu), what="the load to start")
    staying = asyncio.create_task(post_chat(http, emu.url))

    async def two_waiting() -> bool:
        state = await admin_get(http, emu, "state")
        return bool(state["runners"]) and state["runners"][0]["refs"] == 2

    await wait_for(two_waiting, what="both requests to wait on the load")
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    assert "Hello from dmr" in await staying
    counters = (await admin_get(http, emu, "state"))["counters"]
    assert counters["loads_aborted"] == 0
    assert counters["loads_completed"] == 1


async def test_client_leaving_mid_stream_stops_generation(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(chunks=200, chunk_interval_ms=20)
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True)) as resp:
        await resp.content.readline()
        resp.close()

    async def disconnected() -> dict[str, Any] | None:
        log = await admin_get(http, emu, "requests")
        return log[0] if log[0]["disconnected"] else None

    record = await wait_for(disconnected, what="the disconnect to be recorded")
    assert record["finished"] is False
    assert record["disconnected_during_load"] is False
    state = await admin_get(http, emu, "state")
    assert state["counters"]["streams_completed"] == 0
    assert state["counters"]["disconnects"] == 1

    async def released() -> bool:
        return "in_use" not in (await ps(http, emu))[0]

    await wait_for(released, what="the runner to be released")


async def test_old_dmr_answers_503_while_loading(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(loading_503=True, load_time_ms=300)
    url = f"{emu.url}/engines/v1/chat/completions"
    async with http.post(url, json=chat_body()) as resp:
        assert resp.status == 503
        assert await resp.json() == {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    # the first request started the load: the model becomes ready without another request

    async def loaded() -> bool:
        return bool((await admin_get(http, emu, "state"))["loaded"])

    await wait_for(loaded, what="the background load")
    assert "Hello from dmr" in await post_chat(http, emu.url)
    assert (await admin_get(http, emu, "state"))["counters"]["loads_started"] == 1


async def test_failing_model_load_is_500(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["ai/smollm2", "ai/qwen3"], fail_models=["qwen3"])
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body("ai/qwen3")) as resp:
        assert resp.status == 500
        assert resp.content_type == "text/plain"
        assert (await resp.text()).startswith("unable to load runner: ")
    state = await admin_get(http, emu, "state")
    assert state["runners"] == []
    assert state["counters"]["loads_failed"] == 1
    assert "Hello from dmr" in await post_chat(http, emu.url, "ai/smollm2")
