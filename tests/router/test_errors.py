"""Every error the router answers is JSON in its API's shape, with the right status (never text or HTML)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import ProcessFactory, RedisServer
from tests.router.support import MODEL, EmuSpec, Stack, build_stack, chat

LIMITS = {"PIER_MAX_BODY_BYTES": "4096", "PIER_MAX_HEADER_BYTES": "8192", "PIER_MAX_HEADERS": "40"}


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")], router_extra=LIMITS)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.url) as session:
        yield session
    await stack.reset_emulators()


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    assert resp.content_type == "application/json", await resp.text()
    body: dict[str, Any] = await resp.json()
    return body["error"] if "error" in body and "type" not in body else body


async def test_invalid_json_is_400(http: aiohttp.ClientSession) -> None:
    async with http.post("/engines/v1/chat/completions", data=b'{"model": ', headers=JSON) as resp:
        assert resp.status == 400
        error = await error_of(resp)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert resp.headers["X-Pier-Request-ID"]


async def test_missing_model_and_non_object_bodies_are_400(http: aiohttp.ClientSession) -> None:
    async with http.post("/v1/chat/completions", json={"messages": []}) as resp:
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "model_required"
    async with http.post("/v1/embeddings", json=["not", "an", "object"]) as resp:
        assert resp.status == 400
        assert (await error_of(resp))["code"] == "invalid_request"
    async with http.post("/v1/embeddings", json={"model": 7}) as resp:
        assert resp.status == 400


async def test_unknown_model_is_404_listing_the_models(http: aiohttp.ClientSession) -> None:
    async with http.post("/engines/v1/chat/completions", json=chat("ai/unknown-model")) as resp:
        assert resp.status == 404
        error = await error_of(resp)
    assert error["code"] == "model_not_found"
    assert error["available_models"] == [MODEL]
    assert MODEL in error["message"]


async def test_body_over_the_limit_is_413(http: aiohttp.ClientSession) -> None:
    big = chat(padding="x" * 8000)
    async with http.post("/engines/v1/chat/completions", json=big) as resp:
        assert resp.status == 413
        assert (await error_of(resp))["code"] == "body_too_large"


async def test_chunked_body_over_the_limit_is_413(http: aiohttp.ClientSession, stack: Stack) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "smollm2", "padding": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    async with http.post("/engines/v1/chat/completions", data=chunks(), headers=JSON) as resp:
        assert resp.status == 413
        assert (await error_of(resp))["code"] == "body_too_large"
    assert await stack.emu("e1").requests() == []  # nothing reached the endpoint


async def test_a_body_at_the_limit_passes_and_reaches_the_endpoint_with_content_length(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    body = chat()
    raw = json.dumps(body).encode()
    padded = raw[:-1] + b', "pad": "' + b"p" * (4096 - len(raw) - 11) + b'"}'
    assert len(padded) == 4096

    async def chunked() -> AsyncIterator[bytes]:
        yield padded[:1000]
        yield padded[1000:]

    async with http.post("/engines/v1/chat/completions", data=chunked(), headers=JSON) as resp:
        assert resp.status == 200, await resp.text()
    (record,) = await stack.emu("e1").requests()
    headers = {k.lower(): v for k, v in record["headers"].items()}
    assert headers["content-length"] == "4096"  # re-sent with its length, not chunked
    assert "transfer-encoding" not in headers


async def test_one_huge_header_is_431(http: aiohttp.ClientSession) -> None:
    async with http.post("/engines/v1/chat/completions", json=chat(), headers={"X-Big": "b" * 9000}) as resp:
        assert resp.status == 431
        assert (await error_of(resp))["code"] == "headers_too_large"


async def test_headers_too_large_together_is_431(http: aiohttp.ClientSession) -> None:
    headers = {f"X-Part-{i}": "h" * 500 for i in range(20)}  # each fine, 10 KB together
    async with http.post("/engines/v1/chat/completions", json=chat(), headers=headers) as resp:
        assert resp.status == 431
        assert (await error_of(resp))["code"] == "headers_too_large"


async def test_too_many_headers_is_431(http: aiohttp.ClientSession) -> None:
    headers = {f"X-N-{i}": "1" for i in range(60)}
    async with http.get("/internal/health", headers=headers) as resp:
        assert resp.status == 431
        assert (await error_of(resp))["code"] == "headers_too_large"


async def test_wrong_method_is_405_with_allow(http: aiohttp.ClientSession) -> None:
    async with http.get("/engines/v1/chat/completions") as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert (await error_of(resp))["code"] == "method_not_allowed"
    async with http.put("/internal/health") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert (await error_of(resp))["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "command"),
    [
        ("POST", "/models/create", "docker model pull"),
        ("DELETE", "/models/ai/smollm2:latest", "docker model rm"),
        ("POST", "/engines/_configure", "docker model configure"),
        ("POST", "/engines/unload", "docker model unload"),
        ("POST", "/olla/dmr/models/create", "docker model pull"),
    ],
)
async def test_model_management_is_405_naming_the_command(
    http: aiohttp.ClientSession, method: str, path: str, command: str
) -> None:
    async with http.request(method, path, json={"from": "ai/smollm2"}) as resp:
        assert resp.status == 405
        error = await error_of(resp)
    assert error["code"] == "management_not_proxied"
    assert command in error["message"]


async def test_unknown_route_is_404_json(http: aiohttp.ClientSession) -> None:
    async with http.get("/no/such/route") as resp:
        assert resp.status == 404
        assert (await error_of(resp))["code"] == "not_found"
    async with http.post("/engines/nosuch/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 404  # DMR's engines only, as DMR answers


async def test_dmr_text_errors_become_openai_json_keeping_status_and_message(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    message = "unable to load runner: error waiting for runner to be ready: boom"
    await stack.emu("e1").fault(mode="status", status=500, message=message, count=1, paths=["/engines/v1/chat"])
    async with http.post("/engines/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 500
        error = await error_of(resp)
        assert resp.headers["X-Pier-Endpoint"] == "e1"
    assert error == {"message": message, "type": "server_error", "code": 500, "param": None}


async def test_anthropic_routes_answer_anthropic_shaped_errors(http: aiohttp.ClientSession) -> None:
    body = {"model": "ai/unknown", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    async with http.post("/anthropic/v1/messages", json=body) as resp:
        assert resp.status == 404
        data = await resp.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == "not_found_error"
    async with http.post("/olla/anthropic/v1/messages", data=b"nope", headers=JSON) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


JSON = {"Content-Type": "application/json"}


# --- upstream failures: a stack per test (they mark endpoints down) -----------------------------------------


@pytest.fixture
def slow_probe_stack(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> Stack:
    """Two endpoints with one model each, probed once a minute: the router alone notices their failures."""
    slow = {"check_interval": "60s", "check_timeout": "2s", "response_header_timeout": "1s"}
    specs = [
        EmuSpec("e1", 100, ("--models", "ai/smollm2"), slow),
        EmuSpec("e2", 100, ("--models", "ai/gemma3"), slow, "ai/gemma3:latest"),
    ]
    return build_stack(procs, tmp_path, redis_url, specs)


async def test_unreachable_upstream_is_502_then_503_with_retry_after(slow_probe_stack: Stack) -> None:
    stack = slow_probe_stack
    await stack.emu("e1").fault(mode="refuse")
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post("/engines/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 502
            error = await error_of(resp)
            assert error["code"] == "upstream_unreachable"
            assert "e1" in error["message"]
            assert resp.headers["X-Pier-Attempts"] == "1"
        # The router marked e1 down at once: nothing can serve smollm2 now.
        async with http.post("/engines/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await error_of(resp))["code"] == "no_endpoint_available"


async def test_upstream_header_timeout_is_504(slow_probe_stack: Stack) -> None:
    stack = slow_probe_stack
    await stack.emu("e2").fault(mode="hang")
    async with (
        aiohttp.ClientSession(base_url=stack.url) as http,
        http.post("/engines/v1/chat/completions", json=chat("ai/gemma3")) as resp,
    ):
        assert resp.status == 504
        error = await error_of(resp)
    assert error["code"] == "upstream_timeout"
    assert "e2" in error["message"]
