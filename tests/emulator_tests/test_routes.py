"""DMR's listing, status and error routes, checked against dmr-api.md."""

from __future__ import annotations

import io

import aiohttp

from tests.emulator import EmulatorServer
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import chat_body, ps

TEXT = "text/plain"


async def text_of(resp: aiohttp.ClientResponse) -> str:
    return (await resp.text()).strip()


async def test_root_says_running(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with http.get(f"{emu.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == TEXT
        assert await resp.text() == "Docker Model Runner is running"
        assert resp.headers["X-Emulator-Name"] == "dmr"


async def test_openai_listing_pulled_mode(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["ai/smollm2", "gemma3"])
    for path in ("/engines/v1/models", "/v1/models", "/engines/llama.cpp/v1/models"):
        async with http.get(emu.url + path) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["object"] == "list"
        by_id = {m["id"]: m for m in body["data"]}
        assert set(by_id) == {"ai/smollm2:latest", "ai/gemma3:latest"}, path
        smol = by_id["ai/smollm2:latest"]
        assert smol["object"] == "model"
        assert smol["owned_by"] == "docker"
        assert isinstance(smol["created"], int)
        assert set(smol["dmr"]) == {"context_window", "architecture", "parameters", "quantization", "size"}
    async with http.get(f"{emu.url}/engines/v1/models/ai/smollm2") as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == "ai/smollm2:latest"


async def test_openai_listing_loaded_mode(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(list_mode="loaded")
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
        assert (await resp.json()) == {"object": "list", "data": []}
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 200
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert [m["id"] for m in (await resp.json())["data"]] == ["ai/smollm2:latest"]


async def test_management_listing(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["SmolLM2", "hf.co/bartowski/Foo-GGUF"])
    async with http.get(f"{emu.url}/models") as resp:
        assert resp.status == 200
        models = await resp.json()
    tags = sorted(t for m in models for t in m["tags"])
    assert tags == ["ai/smollm2:latest", "huggingface.co/bartowski/foo-gguf:latest"]
    for model in models:
        assert model["id"].startswith("sha256:")
        assert len(model["id"]) == len("sha256:") + 64
        assert isinstance(model["created"], int)
        config = model["config"]
        assert set(config) == {"format", "quantization", "parameters", "architecture", "size", "context_size"}
        assert config["format"] == "gguf"
    async with http.get(f"{emu.url}/models/ai/smollm2") as resp:
        assert resp.status == 200
        assert (await resp.json())["tags"] == ["ai/smollm2:latest"]
    async with http.get(f"{emu.url}/models/ai/absent") as resp:
        assert resp.status == 404
        assert resp.content_type == TEXT


async def test_status_version_and_unknown_routes(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(engines=["llama.cpp", "vllm"], version="v9.9.9")
    async with http.get(f"{emu.url}/engines/status") as resp:
        status = await resp.json()
    assert status["llama.cpp"].startswith("Running: llama.cpp")
    assert status["vllm"].startswith("Running")
    assert status["mlx"].startswith("Not Installed")
    assert set(status) == {"llama.cpp", "vllm", "mlx", "sglang", "diffusers"}
    async with http.get(f"{emu.url}/version") as resp:
        assert await resp.json() == {"version": "v9.9.9"}
    async with http.get(f"{emu.url}/no/such/route") as resp:
        assert resp.status == 404
        assert resp.content_type == TEXT


async def test_old_dmr_has_no_ps_or_version(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(no_ps=True)
    for path in ("/engines/ps", "/version"):
        async with http.get(emu.url + path) as resp:
            assert resp.status == 404, path
            assert resp.content_type == TEXT
    async with http.get(f"{emu.url}/engines/status") as resp:
        assert resp.status == 200


async def test_inference_errors_are_dmr_text(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator()
    cases = [
        ("/engines/v1/chat/completions", {"messages": []}, 400, "model is required"),
        ("/engines/v1/chat/completions", chat_body("ai/absent"), 404, "error while getting model: model not found"),
        ("/engines/bogus/v1/chat/completions", chat_body(), 404, "backend not found"),
        ("/v1/embeddings", {"model": "", "input": "x"}, 400, "model is required"),
    ]
    for path, body, status, message in cases:
        async with http.post(emu.url + path, json=body) as resp:
            assert resp.status == status, path
            assert resp.content_type == TEXT
            assert await text_of(resp) == message
    async with http.post(f"{emu.url}/engines/v1/chat/completions", data=b"{not json") as resp:
        assert resp.status == 400
        assert await text_of(resp) == "invalid request"
    async with http.post(f"{emu.url}/engines/vllm/v1/chat/completions", json=chat_body()) as resp:
        assert resp.status == 412
        assert resp.content_type == TEXT
        assert "not installed" in await text_of(resp)


async def test_body_limit_is_10_mib(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    big = '{"model":"ai/smollm2","messages":[{"role":"user","content":"' + "x" * (10 * 1024 * 1024) + '"}]}'
    async with http.post(f"{emu.url}/engines/v1/chat/completions", data=io.BytesIO(big.encode())) as resp:
        assert resp.status == 400
        assert await text_of(resp) == "request too large"
    fits = '{"model":"ai/smollm2","messages":[{"role":"user","content":"' + "x" * (9 * 1024 * 1024) + '"}]}'
    async with http.post(f"{emu.url}/engines/v1/chat/completions", data=io.BytesIO(fits.encode())) as resp:
        assert resp.status == 200


async def test_ps_omits_false_fields_when_idle(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    assert await ps(http, emu) == []
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body("smollm2")) as resp:
        assert resp.status == 200
    entries = await ps(http, emu)
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) == {"backend_name", "model_name", "mode", "last_used"}
    assert entry["backend_name"] == "llama.cpp"
    assert entry["model_name"] == "smollm2"
    assert entry["mode"] == "completion"
    assert entry["last_used"].endswith("Z")


async def test_cors_rejects_non_local_origins(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(allowed_origins=["https://app.example"])
    async with http.get(f"{emu.url}/engines/v1/models", headers={"Origin": "http://evil.example"}) as resp:
        assert resp.status == 403
        assert resp.content_type == TEXT
        assert await text_of(resp) == "Origin not allowed"
    chat_url = f"{emu.url}/engines/v1/chat/completions"
    async with http.post(chat_url, json=chat_body(), headers={"Origin": "https://evil.example"}) as resp:
        assert resp.status == 403
    for origin in ("http://localhost:3000", "http://127.0.0.1", "https://app.example"):
        async with http.get(f"{emu.url}/engines/v1/models", headers={"Origin": origin}) as resp:
            assert resp.status == 200, origin
            assert resp.headers["Access-Control-Allow-Origin"] == origin
    async with http.get(f"{emu.url}/engines/v1/models") as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    async with http.options(chat_url, headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]


async def test_deep_json_is_a_text_400_as_for_bad_json(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    """DMR's Go decoder refuses nesting past its max depth as it refuses malformed JSON."""
    deep = b'{"model":"ai/smollm2","x":' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    for path in ("/engines/v1/chat/completions", "/models/create"):
        async with http.post(f"{emu.url}{path}", data=deep) as resp:
            assert resp.status == 400
            assert resp.content_type == TEXT
            assert await text_of(resp) == "invalid request"
    async with http.get(f"{emu.url}/") as resp:
        assert resp.status == 200  # still serving
