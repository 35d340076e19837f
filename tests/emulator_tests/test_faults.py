"""Fault injection: refuse, reset, status, loading, hang, drop, slow_first_byte, garbage, trickle; count, paths,
duration."""

from __future__ import annotations

import asyncio
import errno
import time
from typing import Any

import aiohttp
import pytest

from tests.emulator import EmulatorConfig, EmulatorServer, build_app
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, admin_post, chat_body
from tests.harness import free_port, wait_for

CHAT = "/engines/v1/chat/completions"


async def fault(http: aiohttp.ClientSession, emu: EmulatorServer, **settings: Any) -> dict[str, Any]:
    result: dict[str, Any] = await admin_post(http, emu, "fault", settings)
    return result


async def refused(url: str) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    except ConnectionRefusedError as exc:
        return exc.errno == errno.ECONNREFUSED
    writer.close()
    await writer.wait_closed()
    return False


async def test_refuse_closes_the_main_listener(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    port = emu.port
    state = await fault(http, emu, mode="refuse")
    assert state["listening"] is False
    assert await refused(emu.url)
    with pytest.raises(aiohttp.ClientConnectorError) as info:
        async with http.get(f"{emu.url}/"):
            pass
    assert info.value.os_error.errno == errno.ECONNREFUSED
    assert (await admin_get(http, emu, "state"))["fault"]["mode"] == "refuse"  # the admin port still answers
    state = await fault(http, emu, mode="none")
    assert state["listening"] is True
    assert emu.port == port
    async with http.get(f"{emu.url}/") as resp:
        assert resp.status == 200


async def test_refuse_kills_kept_alive_connections(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.get(f"{emu.url}/") as resp:  # leaves a pooled keep-alive connection
        assert resp.status == 200
    await fault(http, emu, mode="refuse")
    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"{emu.url}/") as resp:
            await resp.read()


async def test_refuse_with_duration_reopens_by_itself(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="refuse", duration_ms=200)
    assert await refused(emu.url)

    async def back() -> bool:
        return not await refused(emu.url)

    await wait_for(back, what="the listener to re-open")
    assert (await admin_get(http, emu, "state"))["fault"]["mode"] == "none"


async def test_refuse_needs_the_emulator_server(http: aiohttp.ClientSession) -> None:
    runner = aiohttp.web.AppRunner(build_app(EmulatorConfig()))
    await runner.setup()
    port = free_port()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with http.post(f"http://127.0.0.1:{port}/_emulator/fault", json={"mode": "refuse"}) as resp:
            assert resp.status == 400
            assert "refuse" in (await resp.json())["error"]["message"]
        async with http.get(f"http://127.0.0.1:{port}/") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_reset_aborts_the_connection(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="reset", count=1)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        async with http.post(emu.url + CHAT, json=chat_body()) as resp:
            await resp.read()
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
    log = await admin_get(http, emu, "requests")
    assert [(r["fault"], r["status"], r["finished"]) for r in log] == [("reset", None, False), (None, 200, True)]


async def test_status_faults_answer_like_dmr(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    cases = [
        (500, "unable to load runner: "),
        (503, "service unavailable"),
        (401, "unauthorized"),
        (403, "forbidden"),
    ]
    for status, text in cases:
        await fault(http, emu, mode="status", status=status, count=1)
        async with http.post(emu.url + CHAT, json=chat_body()) as resp:
            assert resp.status == status
            assert resp.content_type == "text/plain"
            assert (await resp.text()).startswith(text)
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200  # count used up
    await fault(http, emu, mode="status", status=500, message="unable to load runner: out of memory", count=1)
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert (await resp.text()).strip() == "unable to load runner: out of memory"


async def test_429_carries_retry_after(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="status", status=429, retry_after=7, count=1)
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "7"
    date = "Wed, 21 Oct 2026 07:28:00 GMT"
    await fault(http, emu, mode="status", status=429, retry_after=date, count=1)
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.headers["Retry-After"] == date


async def test_loading_is_llama_cpp_json(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="loading", count=2)
    for _ in range(2):
        async with http.post(emu.url + CHAT, json=chat_body()) as resp:
            assert resp.status == 503
            assert await resp.json() == {
                "error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            }
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200


async def test_paths_filter_and_until_cleared(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="status", status=503, paths=["/engines/v1/chat"])
    for _ in range(3):
        async with http.post(emu.url + CHAT, json=chat_body()) as resp:
            assert resp.status == 503
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
    await fault(http, emu, mode="none")
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200


async def test_hang_sends_nothing_until_the_client_leaves(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="hang", count=1)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(f"{emu.url}/engines/v1/models", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass

    async def left() -> bool:
        return bool((await admin_get(http, emu, "requests"))[0]["disconnected"])

    await wait_for(left, what="the hung request to see its client leave")
    record = (await admin_get(http, emu, "requests"))[0]
    assert (record["fault"], record["status"], record["finished"]) == ("hang", None, False)


async def test_drop_mid_stream(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="drop", drop_after=2, count=1)
    lines: list[bytes] = []

    async def read_stream() -> None:
        async with http.post(emu.url + CHAT, json=chat_body(stream=True)) as resp:
            assert resp.status == 200
            async for line in resp.content:
                lines.append(line)

    with pytest.raises(aiohttp.ClientPayloadError):
        await read_stream()
    assert len([x for x in lines if x.startswith(b"data: ")]) == 2
    record = (await admin_get(http, emu, "requests"))[0]
    assert (record["fault"], record["status"], record["finished"], record["disconnected"]) == (
        "drop",
        200,
        False,
        False,
    )


async def test_drop_plain_response_after_headers(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="drop", count=1)
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
        assert resp.headers["X-Emulator-Name"] == "dmr"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_slow_first_byte(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="slow_first_byte", delay_ms=300, count=1)
    started = time.monotonic()
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
        assert time.monotonic() - started >= 0.3
        assert (await resp.json())["object"] == "list"


async def raw_exchange(emu: EmulatorServer, *, read_s: float) -> tuple[bytes, float]:
    """Send one raw HTTP request; what came back within `read_s` (or until the emulator closed), and when."""
    reader, writer = await asyncio.open_connection("127.0.0.1", emu.port)
    writer.write(b"GET /engines/v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    got = b""
    try:
        async with asyncio.timeout(read_s):
            while chunk := await reader.read(1024):
                got += chunk
    except TimeoutError:
        pass
    writer.close()
    return got, time.monotonic() - started


async def test_garbage_answers_bytes_that_are_not_http(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="garbage", count=1)
    got, _ = await raw_exchange(emu, read_s=5)
    assert got
    assert not got.startswith(b"HTTP/")
    await fault(http, emu, mode="garbage", count=1)
    with pytest.raises(aiohttp.ClientError):  # an HTTP client's parser refuses it
        async with http.get(f"{emu.url}/engines/v1/models") as resp:
            await resp.read()
    record = (await admin_get(http, emu, "requests"))[0]
    assert (record["fault"], record["status"], record["finished"]) == ("garbage", None, False)


async def test_trickle_sends_one_byte_per_interval(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await fault(http, emu, mode="trickle", delay_ms=100, count=1)
    got, elapsed = await raw_exchange(emu, read_s=0.75)
    assert b"HTTP/1.1 503".startswith(got)
    assert 3 <= len(got) <= 9
    assert elapsed >= 0.7
    async with http.get(f"{emu.url}/engines/v1/models") as resp:  # count=1: the next request is normal
        assert resp.status == 200


async def test_first_byte_delay_switch(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(first_byte_delay_ms=250, load_time_ms=0)
    started = time.monotonic()
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.25


async def test_bad_fault_settings_are_rejected(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    for body in ({"mode": "explode"}, {"mode": "status", "status": "x"}, {"mode": "hang", "bogus": 1}):
        async with http.post(f"{emu.admin_url}/_emulator/fault", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"]
    assert (await admin_get(http, emu, "state"))["fault"]["mode"] == "none"
