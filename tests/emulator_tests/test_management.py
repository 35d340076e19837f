"""Model pulls and deletes, `_configure`, unload and metrics, against dmr-api.md."""

from __future__ import annotations

import json

import aiohttp

from tests.emulator import EmulatorServer
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, admin_post, chat_body, ps
from tests.harness import wait_for

CHAT = "/engines/v1/chat/completions"


async def test_pull_streams_json_lines_when_asked(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    headers = {"Accept": "application/json"}
    async with http.post(f"{emu.url}/models/create", json={"from": "ai/gemma3"}, headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds[-1] == "success"
    assert set(kinds[:-1]) == {"progress"}
    assert len(kinds) >= 2
    progress = lines[0]
    assert {"message", "total", "layer"} <= set(progress)
    assert set(progress["layer"]) == {"id", "size", "current"}
    currents = [line["layer"]["current"] for line in lines[:-1]]
    assert currents == sorted(currents)
    assert currents[-1] == progress["total"]
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert "ai/gemma3:latest" in [m["id"] for m in (await resp.json())["data"]]
    async with http.post(emu.url + CHAT, json=chat_body("ai/gemma3")) as resp:
        assert resp.status == 200


async def test_pull_without_accept_is_html_escaped_text(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.post(f"{emu.url}/models/create", json={"from": "qwen3"}) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert '"' not in text
    first = text.splitlines()[0]
    assert first.startswith("{&#34;type&#34;:&#34;progress&#34;")
    assert "&#34;success&#34;" in text.splitlines()[-1]


async def test_pull_unknown_model_is_404(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(pullable=["ai/smollm2", "ai/gemma3"])
    async with http.post(f"{emu.url}/models/create", json={"from": "ai/qwen3"}) as resp:
        assert resp.status == 404
        assert resp.content_type == "text/plain"
        assert (await resp.text()).strip() == "Model not found"
    async with http.post(f"{emu.url}/models/create", json={}) as resp:
        assert resp.status == 400


async def test_pull_can_fail_after_200(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    await admin_post(http, emu, "config", {"pull_error": "disk full"})
    headers = {"Accept": "application/json"}
    async with http.post(f"{emu.url}/models/create", json={"from": "ai/gemma3"}, headers=headers) as resp:
        assert resp.status == 200
        lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert lines[-1] == {"type": "error", "message": "disk full"}
    assert "ai/gemma3:latest" not in (await admin_get(http, emu, "state"))["pulled"]


async def test_delete_model(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["ai/smollm2", "ai/gemma3"])
    async with http.delete(f"{emu.url}/models/ai/gemma3") as resp:
        assert resp.status == 200
    async with http.delete(f"{emu.url}/models/ai/gemma3") as resp:
        assert resp.status == 404
    async with http.post(emu.url + CHAT, json=chat_body("ai/gemma3")) as resp:
        assert resp.status == 404


async def test_delete_model_in_use_conflicts(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=50, chunk_interval_ms=20)
    async with http.post(emu.url + CHAT, json=chat_body(stream=True)) as stream:
        await stream.content.readline()
        async with http.delete(f"{emu.url}/models/ai/smollm2") as resp:
            assert resp.status == 409
        await stream.read()


async def test_configure_preloads_in_background(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(load_time_ms=1500)
    body = {"model": "ai/smollm2", "context-size": 4096, "keep_alive": "10m"}
    async with http.post(f"{emu.url}/engines/_configure", json=body) as resp:
        assert resp.status == 202
    entries = await ps(http, emu)
    assert entries[0]["loading"] is True

    async def loaded() -> bool:
        found = await ps(http, emu)
        return bool(found) and "loading" not in found[0]

    await wait_for(loaded, what="the preload to finish")
    entry = (await ps(http, emu))[0]
    assert entry["keep_alive"] == "10m0s"
    assert "in_use" not in entry


async def test_configure_errors(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=50, chunk_interval_ms=20)
    async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/absent"}) as resp:
        assert resp.status == 404
    async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/smollm2", "keep_alive": "soon"}) as resp:
        assert resp.status == 400
    async with http.post(emu.url + CHAT, json=chat_body(stream=True)) as stream:
        await stream.content.readline()
        async with http.post(f"{emu.url}/engines/_configure", json={"model": "ai/smollm2"}) as resp:
            assert resp.status == 409
            assert (await resp.text()).strip() == "runner already active"
        await stream.read()


async def test_unload_leaves_busy_runners(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(
        models=["ai/smollm2", "ai/gemma3", "ai/qwen3"], chunks=50, chunk_interval_ms=20, max_runners=4
    )
    for model in ("ai/smollm2", "ai/gemma3"):
        async with http.post(emu.url + CHAT, json=chat_body(model)) as resp:
            assert resp.status == 200
    async with http.post(f"{emu.url}/engines/unload", json={"models": ["gemma3"]}) as resp:
        assert await resp.json() == {"unloaded_runners": 1}
    assert [e["model_name"] for e in await ps(http, emu)] == ["ai/smollm2"]
    async with http.post(emu.url + CHAT, json=chat_body("ai/qwen3", stream=True)) as stream:
        await stream.content.readline()
        async with http.post(f"{emu.url}/engines/unload", json={"all": True}) as resp:
            assert await resp.json() == {"unloaded_runners": 1}  # smollm2 only: qwen3 is busy
        await stream.read()
    assert [e["model_name"] for e in await ps(http, emu)] == ["ai/qwen3"]


async def test_metrics(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.get(f"{emu.url}/metrics") as resp:
        assert resp.status == 200
        assert (await resp.text()).strip() == "# No active runners"
    async with http.post(emu.url + CHAT, json=chat_body()) as resp:
        assert resp.status == 200
    async with http.get(f"{emu.url}/metrics") as resp:
        text = await resp.text()
    assert "# TYPE llamacpp:prompt_tokens_total counter" in text
    assert 'llamacpp:tokens_predicted_total{backend="llama.cpp",model="ai/smollm2",mode="completion"} 5' in text


async def test_keep_alive_formats(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["ai/smollm2", "ai/gemma3", "ai/qwen3"], max_runners=4)
    expected = {"ai/smollm2": ("1h30m", "1h30m0s"), "ai/gemma3": ("-1", "-1"), "ai/qwen3": (90, "1m30s")}
    for model, (value, _) in expected.items():
        async with http.post(f"{emu.url}/engines/_configure", json={"model": model, "keep_alive": value}) as resp:
            assert resp.status == 202

    async def all_loaded() -> bool:
        found = await ps(http, emu)
        return len(found) == 3 and not any(e.get("loading") for e in found)

    await wait_for(all_loaded, what="three preloads")
    shown = {e["model_name"]: e["keep_alive"] for e in await ps(http, emu)}
    assert shown == {model: text for model, (_, text) in expected.items()}
