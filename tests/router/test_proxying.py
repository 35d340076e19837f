"""What crosses the proxy: headers both ways, the body as sent (or with the alias rewritten), explicit engine
paths, query strings, the Anthropic passthrough, and the routes the router answers from its own table."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from shared.names import normalise_model
from tests.harness import ProcessFactory, RedisServer, wait_for
from tests.router.support import MODEL, EmuSpec, Stack, build_stack, chat

CHAT = "/engines/v1/chat/completions"
E1_ENTRY = {"headers": {"X-Endpoint-Key": "k1"}, "auth": {"type": "bearer", "token": "endpoint-token"}}


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    specs = [
        EmuSpec("e1", 100, (), E1_ENTRY),
        EmuSpec("e2", 50, ("--models", "ai/smollm2,ai/gemma3")),
    ]
    return build_stack(
        module_procs, module_dir, module_redis.url, specs, config_top={"model_aliases": {"fast": ["ai/smollm2"]}}
    )


async def last_record(stack: Stack, name: str = "e1") -> dict[str, Any]:
    records = await stack.emu(name).requests("/")
    return records[-1]


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def test_client_credentials_and_origin_stay_behind_endpoint_auth_is_added(stack: Stack) -> None:
    client_headers = {
        "Authorization": "Bearer client-secret",
        "X-Api-Key": "client-anthropic-key",
        "Cookie": "session=1",
        "Proxy-Authorization": "Basic eDp5",
        "Origin": "http://evil.example",
        "X-Custom": "kept",
        "X-Request-ID": "trace-abc-1",
    }
    async with aiohttp.ClientSession() as http:
        # DMR refuses a foreign Origin: forwarding it would break every browser-originated request.
        async with http.post(
            f"{stack.emu('e1').url}{CHAT}", json=chat(), headers={"Origin": "http://evil.example"}
        ) as r:
            assert r.status == 403
        async with http.post(f"{stack.url}{CHAT}", json=chat(), headers=client_headers) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Pier-Request-ID"] == "trace-abc-1"
            assert "Set-Cookie" not in resp.headers
    sent = lower((await last_record(stack))["headers"])
    assert sent["authorization"] == "Bearer endpoint-token"
    assert sent["x-endpoint-key"] == "k1"
    assert sent["x-custom"] == "kept"
    assert sent["x-request-id"] == "trace-abc-1"
    assert sent["host"] == stack.emu("e1").url.removeprefix("http://")
    for gone in ("cookie", "origin", "proxy-authorization", "x-api-key"):
        assert gone not in sent


async def test_a_bad_inbound_request_id_is_replaced_and_sent_upstream(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}{CHAT}", json=chat(), headers={"X-Request-ID": "no spaces please"}) as resp,
    ):
        rid = resp.headers["X-Pier-Request-ID"]
    assert rid != "no spaces please"
    assert lower((await last_record(stack))["headers"])["x-request-id"] == rid


async def test_the_body_is_forwarded_as_sent(stack: Stack) -> None:
    raw = b'{ "model" : "smollm2",\n  "messages": [{"role":"user","content":"caf\\u00e9"}], "x_extra": {"b":1,"a":2} }'
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}{CHAT}", data=raw, headers={"Content-Type": "application/json"}) as resp,
    ):
        assert resp.status == 200
    record = await last_record(stack)
    assert lower(record["headers"])["content-length"] == str(len(raw))
    assert record["body"] == json.loads(raw)


async def test_a_compressed_request_body_is_forwarded_decompressed(stack: Stack) -> None:
    body = chat(note="gzip")
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}{CHAT}", data=gzip.compress(json.dumps(body).encode()), headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
    record = await last_record(stack)
    assert record["body"] == body
    assert "content-encoding" not in lower(record["headers"])


async def test_an_alias_is_rewritten_to_the_real_name(stack: Stack) -> None:
    body = chat("fast", temperature=0.25, x_extra=[1, 2])
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}{CHAT}", json=body) as resp:
        assert resp.status == 200
        assert resp.headers["X-Pier-Model"] == MODEL
    sent = (await last_record(stack))["body"]
    assert sent == {**body, "model": "ai/smollm2"}


@pytest.mark.parametrize(
    "path", ["/engines/llama.cpp/v1/chat/completions", "/olla/dmr/engines/llama.cpp/v1/completions"]
)
async def test_explicit_engine_paths_reach_the_engine(stack: Stack, path: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}{path}", json=chat(prompt="x")) as resp:
        assert resp.status == 200, await resp.text()
    assert (await last_record(stack))["path"] == path.removeprefix("/olla/dmr")


async def test_an_engine_no_endpoint_runs_is_503(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}/engines/vllm/v1/chat/completions", json=chat()) as resp,
    ):
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "engine_unavailable"


async def test_query_strings_are_forwarded(stack: Stack) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{stack.url}/v1/chat/completions?trace=1&x=%20y", json=chat()) as r,
    ):
        assert r.status == 200
    record = await last_record(stack)
    assert record["path"] == "/engines/v1/chat/completions"  # DMR's own prefix on the endpoint
    assert record["query"] == {"trace": "1", "x": " y"}


@pytest.mark.parametrize("root", ["/anthropic", "/olla/anthropic"])
def test_anthropic_sdk_passthrough(stack: Stack, root: str) -> None:
    with anthropic.Anthropic(base_url=f"{stack.url}{root}", api_key="not-forwarded", max_retries=0) as sdk:
        message = sdk.messages.create(model="ai/smollm2", max_tokens=64, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].type == "text"
        assert message.content[0].text.startswith("Hello from e1")
        with sdk.messages.stream(model="smollm2", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
            text = "".join(s.text_stream)
        assert text.startswith("Hello from e1")
        counted = sdk.messages.count_tokens(model="smollm2", messages=[{"role": "user", "content": "hi"}])
        assert counted.input_tokens > 0
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.create(model="ai/nope", max_tokens=8, messages=[{"role": "user", "content": "hi"}])


async def test_listings_are_answered_from_the_table(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.emu('e1').url}/engines/v1/models") as resp:
        dmr_entries = {m["id"]: m for m in (await resp.json())["data"]}
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.get("/engines/v1/models") as resp:
            entries = {m["id"]: m for m in (await resp.json())["data"]}
        assert sorted(entries) == ["ai/gemma3:latest", MODEL]
        # The details the health worker read from the endpoint's inventory, as DMR itself shows them.
        assert entries[MODEL]["dmr"] == dmr_entries[MODEL]["dmr"]
        assert entries[MODEL]["created"] == dmr_entries[MODEL]["created"]
        async with http.get("/models") as resp:
            inventory = await resp.json()
        assert any(MODEL in entry["tags"] for entry in inventory)
        async with http.get("/models/smollm2") as resp:
            assert resp.status == 200
            assert MODEL in (await resp.json())["tags"]
        async with http.get("/models/ai/absent") as resp:
            assert resp.status == 404
        # A chat loads MODEL on e1; the merged /engines/ps then shows DMR's own row for it, tagged with e1,
        # once the health worker has probed it.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
        async with aiohttp.ClientSession() as direct, direct.get(f"{stack.emu('e1').url}/engines/ps") as resp:
            (dmr_row,) = [row for row in await resp.json() if normalise_model(row["model_name"]) == MODEL]

        async def e1_ps_row() -> dict[str, Any] | None:
            async with http.get("/engines/ps") as resp:
                assert resp.status == 200
                rows = await resp.json()
            mine = (r for r in rows if r["endpoint"] == "e1" and normalise_model(r["model_name"]) == MODEL)
            return next(mine, None)

        row = await wait_for(e1_ps_row, timeout_s=15, what="e1's loaded model in /engines/ps")
        assert row["backend_name"] == dmr_row["backend_name"] == "llama.cpp"
        assert row.get("mode") == dmr_row.get("mode")
        async with http.get("/engines/status") as resp:
            assert (await resp.json())["llama.cpp"].startswith("Running")
        async with http.get("/olla/models") as resp:
            assert resp.status == 200
            olla = {m["id"]: m for m in (await resp.json())["data"]}
        assert sorted(olla) == ["ai/gemma3:latest", MODEL]
        assert normalise_model("fast") in olla[MODEL]["olla"]["aliases"]  # the configured alias, normalised
        assert {a["endpoint"] for a in olla[MODEL]["olla"]["availability"]} == {"e1", "e2"}
        assert {a["endpoint"] for a in olla["ai/gemma3:latest"]["olla"]["availability"]} == {"e2"}
        async with http.get("/internal/status/models") as resp:
            assert MODEL in await resp.json()
        async with http.get("/") as resp:
            assert await resp.text() == "Docker Model Runner is running"
