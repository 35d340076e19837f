"""Generation slots inside one runner: serialised by default (DMR), overlapping with `--parallel N`.

Order is asserted on what a client observes (a reply's headers = its first byte, its end = its last byte), and a
request is only sent once the previous one is seen generating or queued in the emulator's state, so every test
knows the requests really were inside the runner at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest

from tests.emulator import EmulatorServer
from tests.emulator.slots import Slots
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, admin_post, chat_body
from tests.harness import wait_for

Log = list[tuple[str, str]]

# A reply that lasts about 3 s: a wide window for a second request to arrive and be seen while it generates.
LONG = {"chunks": 100, "chunk_interval_ms": 30.0}
# A reply that only ends when its client leaves (about 40 s).
ENDLESS = {"chunks": 2000, "chunk_interval_ms": 20.0}


async def stream_chat(http: aiohttp.ClientSession, emu: EmulatorServer, name: str, log: Log, **extra: Any) -> str:
    """Stream one chat reply, logging (name, "first") when its headers arrive and (name, "last") at its end."""
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True, **extra)) as resp:
        log.append((name, "first"))
        assert resp.status == 200, await resp.text()
        body = await resp.text()
        log.append((name, "last"))
    assert "data: [DONE]" in body
    return body


async def runner(http: aiohttp.ClientSession, emu: EmulatorServer, mode: str = "completion") -> dict[str, Any] | None:
    state = await admin_get(http, emu, "state")
    found: list[dict[str, Any]] = [r for r in state["runners"] if r["mode"] == mode]
    return found[0] if found else None


def slots_are(
    http: aiohttp.ClientSession, emu: EmulatorServer, generating: int, queued: int, mode: str = "completion"
) -> Any:
    async def check() -> bool:
        r = await runner(http, emu, mode)
        return r is not None and (r["generating"], r["queued"]) == (generating, queued)

    return check


async def hold_a_slot(http: aiohttp.ClientSession, emu: EmulatorServer) -> aiohttp.ClientResponse:
    """Start an endless stream and return once it is generating (its first event arrived)."""
    resp = await http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True))
    assert resp.status == 200
    assert (await resp.content.readline()).startswith(b"data: ")
    return resp


async def test_default_runner_serves_one_request_at_a_time(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(**LONG)
    log: Log = []
    first = asyncio.create_task(stream_chat(http, emu, "first", log))
    await wait_for(slots_are(http, emu, generating=1, queued=0), what="the first request to generate")
    second = asyncio.create_task(stream_chat(http, emu, "second", log))
    await wait_for(slots_are(http, emu, generating=1, queued=1), what="the second request to queue")
    assert log == [("first", "first")]
    await asyncio.gather(first, second)
    assert log == [("first", "first"), ("first", "last"), ("second", "first"), ("second", "last")]
    final = await runner(http, emu)
    assert final is not None
    assert (final["parallel"], final["generating"], final["queued"], final["refs"]) == (1, 0, 0, 0)


async def _configure(http: aiohttp.ClientSession, emu: EmulatorServer, body: dict[str, Any]) -> None:
    async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/smollm2", **body}) as resp:
        assert resp.status == 202, await resp.text()

    async def loaded() -> dict[str, Any] | None:
        r = await runner(http, emu)
        return r if r is not None and "loading" not in r else None

    assert (await wait_for(loaded, what="the configured runner to load"))["parallel"] == 2


@pytest.mark.parametrize(
    "how",
    ["switch", "admin", "runtime-flags", "runtime-flags=", "raw-runtime-flags"],
)
async def test_parallel_2_overlaps_two_requests(
    http: aiohttp.ClientSession, start_emulator: StartEmulator, how: str
) -> None:
    emu = await start_emulator(**LONG, parallel=2 if how == "switch" else 1)
    if how == "admin":
        await admin_post(http, emu, "config", {"parallel": 2})
    elif how == "runtime-flags":
        await _configure(http, emu, {"runtime-flags": ["--ctx-size", "4096", "--parallel", "2"]})
    elif how == "runtime-flags=":
        await _configure(http, emu, {"runtime-flags": ["--parallel=2"]})
    elif how == "raw-runtime-flags":
        await _configure(http, emu, {"raw-runtime-flags": "--threads 2 -np 2"})
    log: Log = []
    first = asyncio.create_task(stream_chat(http, emu, "first", log))
    await wait_for(slots_are(http, emu, generating=1, queued=0), what="the first request to generate")
    second = asyncio.create_task(stream_chat(http, emu, "second", log))
    await wait_for(slots_are(http, emu, generating=2, queued=0), what="both requests to generate at once")
    await asyncio.gather(first, second)
    assert log.index(("second", "first")) < log.index(("first", "last"))


async def test_configured_flags_override_the_switch_until_reconfigured(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(parallel=3)

    async def configure_and_read(body: dict[str, Any]) -> int:
        async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/smollm2", **body}) as resp:
            assert resp.status == 202, await resp.text()

        async def loaded() -> dict[str, Any] | None:
            r = await runner(http, emu)
            return r if r is not None and "loading" not in r else None

        value: int = (await wait_for(loaded, what="the configured runner to load"))["parallel"]
        return value

    assert await configure_and_read({"runtime-flags": ["--parallel", "1"]}) == 1
    # A new configuration replaces the old one: without --parallel the runner has the switch's slots again.
    assert await configure_and_read({"keep_alive": "10m"}) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"runtime-flags": ["--parallel", "zero"]}, "invalid runtime-flags: --parallel expects a whole number"),
        ({"runtime-flags": ["--parallel=0"]}, "invalid runtime-flags: --parallel expects a whole number"),
        ({"runtime-flags": ["--parallel"]}, "invalid runtime-flags: --parallel needs a value"),
        ({"runtime-flags": "--parallel 2"}, "invalid runtime-flags: expected a list of strings"),
        ({"raw-runtime-flags": ["--parallel", "2"]}, "invalid raw-runtime-flags: expected a string"),
        ({"raw-runtime-flags": "--parallel '2"}, "invalid raw-runtime-flags: "),
    ],
)
async def test_bad_parallel_flags_are_400(
    http: aiohttp.ClientSession, emu: EmulatorServer, body: dict[str, Any], message: str
) -> None:
    async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/smollm2", **body}) as resp:
        assert resp.status == 400
        assert resp.content_type == "text/plain"
        assert (await resp.text()).strip().startswith(message)
    assert (await admin_get(http, emu, "state"))["runners"] == []


@pytest.mark.parametrize(("value", "message"), [(0, "parallel: must be >= 1"), ("2", "parallel: expected an integer")])
async def test_bad_parallel_switch_is_400(
    http: aiohttp.ClientSession, emu: EmulatorServer, value: Any, message: str
) -> None:
    async with http.post(f"{emu.admin_url}/_emulator/config", json={"parallel": value}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == message
    assert (await admin_get(http, emu, "state"))["config"]["parallel"] == 1


async def test_client_leaving_mid_stream_frees_its_slot(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(**ENDLESS)
    holder = await hold_a_slot(http, emu)
    log: Log = []
    third = asyncio.create_task(stream_chat(http, emu, "third", log, max_tokens=2))
    await wait_for(slots_are(http, emu, generating=1, queued=1), what="the next request to queue")
    async with http.get(f"{emu.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'llamacpp:requests_processing{backend="llama.cpp",model="ai/smollm2",mode="completion"} 1' in metrics
    assert 'llamacpp:requests_deferred{backend="llama.cpp",model="ai/smollm2",mode="completion"} 1' in metrics
    assert log == []
    holder.close()  # the client goes away mid-stream
    assert "Hello from dmr (ai/smollm2)." in await third
    await wait_for(slots_are(http, emu, generating=0, queued=0), what="every slot to be free")
    first_record = (await admin_get(http, emu, "requests"))[0]
    assert (first_record["disconnected"], first_record["finished"]) == (True, False)


async def test_queued_client_that_leaves_gives_up_its_place(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(**ENDLESS)
    holder = await hold_a_slot(http, emu)
    log: Log = []
    leaving = asyncio.create_task(stream_chat(http, emu, "leaving", log, max_tokens=2))
    await wait_for(slots_are(http, emu, generating=1, queued=1), what="the leaving request to queue")
    leaving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await leaving
    await wait_for(slots_are(http, emu, generating=1, queued=0), what="the emulator to drop the queued request")
    staying = asyncio.create_task(stream_chat(http, emu, "staying", log, max_tokens=2))
    await wait_for(slots_are(http, emu, generating=1, queued=1), what="the staying request to queue")
    holder.close()
    await staying
    assert log == [("staying", "first"), ("staying", "last")]
    await wait_for(slots_are(http, emu, generating=0, queued=0), what="every slot to be free")
    holder_record, leaving_record, staying_record = [
        r for r in await admin_get(http, emu, "requests") if r["method"] == "POST"
    ]
    assert holder_record["disconnected"] is True
    # The leaving request never got a slot, so it was never answered.
    assert (leaving_record["disconnected"], leaving_record["status"]) == (True, None)
    assert (staying_record["disconnected"], staying_record["status"], staying_record["finished"]) == (False, 200, True)


async def test_queued_requests_are_served_in_arrival_order(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(**ENDLESS)
    holder = await hold_a_slot(http, emu)
    log: Log = []
    names = ["q1", "q2", "q3", "q4"]
    tasks = []
    for i, name in enumerate(names, start=1):
        tasks.append(asyncio.create_task(stream_chat(http, emu, name, log, max_tokens=2)))
        await wait_for(slots_are(http, emu, generating=1, queued=i), what=f"{name} to queue")
    holder.close()
    await asyncio.gather(*tasks)
    assert log == [(name, edge) for name in names for edge in ("first", "last")]


async def test_embeddings_queue_in_their_own_runner(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    # The first-byte delay stands in for the time an embedding takes inside its slot.
    emu = await start_emulator(first_byte_delay_ms=2500)
    log: Log = []

    async def embed(name: str) -> None:
        body = {"model": "ai/smollm2", "input": name}
        async with http.post(f"{emu.url}/engines/v1/embeddings", json=body) as resp:
            log.append((name, "first"))
            assert resp.status == 200
            assert len((await resp.json())["data"]) == 1
            log.append((name, "last"))

    first = asyncio.create_task(embed("e1"))
    await wait_for(slots_are(http, emu, 1, 0, mode="embedding"), what="the first embedding to generate")
    second = asyncio.create_task(embed("e2"))
    await wait_for(slots_are(http, emu, 1, 1, mode="embedding"), what="the second embedding to queue")
    assert await runner(http, emu, "completion") is None  # one runner per model and mode
    await asyncio.gather(first, second)
    assert log == [("e1", "first"), ("e1", "last"), ("e2", "first"), ("e2", "last")]


async def test_preload_and_token_counts_need_no_slot(
    http: aiohttp.ClientSession, start_emulator: StartEmulator
) -> None:
    emu = await start_emulator(**ENDLESS)
    holder = await hold_a_slot(http, emu)
    url = f"{emu.url}/engines/v1/chat/completions"
    async with http.post(url, json=chat_body(), headers={"X-Preload-Only": "true"}) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": "Say hello"}]}
    async with http.post(f"{emu.url}/anthropic/v1/messages/count_tokens", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["input_tokens"] >= 1
    assert await slots_are(http, emu, generating=1, queued=0)()
    holder.close()
    await wait_for(slots_are(http, emu, generating=0, queued=0), what="the slot to be free")


async def test_slot_handed_to_a_waiter_that_was_cancelled_passes_on() -> None:
    slots = Slots(1)
    await slots.acquire()
    served: list[str] = []

    async def wait_then_hold(name: str) -> None:
        async with slots.held():
            served.append(name)

    gone = asyncio.create_task(wait_then_hold("gone"))
    staying = asyncio.create_task(wait_then_hold("staying"))
    await wait_for(lambda: slots.waiting == 2, what="both waiters to queue")
    slots.release()  # hands the slot to `gone` ...
    gone.cancel()  # ... which is cancelled before it could run
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    await staying
    assert served == ["staying"]
    assert (slots.in_use, slots.waiting) == (0, 0)
