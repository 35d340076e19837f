"""The emulator's own admin routes: state, config, the request log and reset."""

from __future__ import annotations

import aiohttp

from tests.emulator import EmulatorServer
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, admin_post, chat_body, ps

CHAT = "/engines/v1/chat/completions"


async def test_state_shape(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(name="alpha", models=["ai/smollm2", "ai/gemma3"])
    state = await admin_get(http, emu, "state")
    assert state["name"] == "alpha"
    assert state["config"]["name"] == "alpha"
    assert state["pulled"] == ["ai/gemma3:latest", "ai/smollm2:latest"]
    assert state["runners"] == []
    assert state["loaded"] == []
    assert state["fault"]["mode"] == "none"
    assert state["listening"] is True
    assert set(state["counters"]) >= {"requests", "loads_started", "loads_aborted", "evictions", "disconnects"}
    # the admin routes answer on the main port too, and are not logged
    async with http.get(f"{emu.url}/_emulator/state") as resp:
        assert resp.status == 200
    assert await admin_get(http, emu, "requests") == []


async def test_config_switches_at_run_time(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    state = await admin_post(
        http, emu, "config", {"name": "beta", "models": "ai/gemma3,ai/qwen3", "list_mode": "loaded", "no_ps": True}
    )
    assert state["pulled"] == ["ai/gemma3:latest", "ai/qwen3:latest"]
    async with http.post(emu.url + CHAT, json=chat_body("ai/gemma3")) as resp:
        assert resp.headers["X-Emulator-Name"] == "beta"
        assert "Hello from beta" in await resp.text()
    async with http.post(emu.url + CHAT, json=chat_body("ai/smollm2")) as resp:
        assert resp.status == 404
    async with http.get(f"{emu.url}/engines/ps") as resp:
        assert resp.status == 404
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["ai/gemma3:latest"]
    state = await admin_post(http, emu, "config", {"fault": {"mode": "status", "status": 503}, "chunks": 2})
    assert state["fault"]["mode"] == "status"
    assert state["config"]["chunks"] == 2


async def test_bad_config_is_rejected_whole(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    for body, key in (
        ({"bogus": 1}, "bogus"),
        ({"list_mode": "sometimes"}, "list_mode"),
        ({"chunks": "many"}, "chunks"),
        ({"engines": ["llama.cpp", "tensorflow"]}, "engines"),
        ({"port": 1}, "port"),
        ({"name": "x", "max_runners": 0}, "max_runners"),
    ):
        async with http.post(f"{emu.admin_url}/_emulator/config", json=body) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"].startswith(key)
    assert (await admin_get(http, emu, "state"))["config"]["name"] == "dmr"  # nothing half-applied


async def test_request_log(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.post(emu.url + CHAT + "?trace=1", json=chat_body(), headers={"X-Test": "yes"}) as resp:
        assert resp.status == 200
    async with http.post(emu.url + CHAT, data=b"plain words") as resp:
        assert resp.status == 400
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
    log = await admin_get(http, emu, "requests")
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", CHAT, 200),
        ("POST", CHAT, 400),
        ("GET", "/engines/v1/models", 200),
    ]
    first = log[0]
    assert first["query"] == {"trace": "1"}
    assert first["headers"]["X-Test"] == "yes"
    assert first["body"] == chat_body()
    assert first["finished"] is True
    assert first["disconnected"] is False
    assert first["disconnected_during_load"] is False
    assert log[1]["body"] == "plain words"
    assert log[0]["at"] <= log[1]["at"] <= log[2]["at"]
    assert [r["id"] for r in log] == [1, 2, 3]


async def test_reset(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
    await admin_post(http, emu, "fault", {"mode": "status", "status": 500})
    state = await admin_post(http, emu, "reset", {})
    assert state["fault"]["mode"] == "none"
    assert state["runners"] == []
    assert all(value == 0 for value in state["counters"].values())
    assert await admin_get(http, emu, "requests") == []
    assert await ps(http, emu) == []


async def test_log_limit_keeps_the_newest(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(log_limit=3)
    for i in range(5):
        async with http.get(f"{emu.url}/engines/v1/models?n={i}") as resp:
            assert resp.status == 200
    log = await admin_get(http, emu, "requests")
    assert [r["query"]["n"] for r in log] == ["2", "3", "4"]
    assert [r["id"] for r in log] == [3, 4, 5]
    assert (await admin_get(http, emu, "state"))["counters"]["requests"] == 5
