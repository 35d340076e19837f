"""Valid JSON nested far deeper than a parser recurses: a clear 400 in the route's API shape, never a 500.

`{"a":{"a":…}}` 10,000 levels deep is 60 KiB of valid JSON. Where the router must parse a body (no model it
can read without parsing) that is its own 400; where it can read the model, the endpoint refuses the body as
DMR does (a text/plain 400) and the router relays that as JSON. Either way the router keeps serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import ProcessFactory, RedisServer
from tests.router.support import MODEL, EmuSpec, Stack, build_stack, chat

DEPTH = 10_000
JSON = {"Content-Type": "application/json"}


def deep(depth: int = DEPTH) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")])


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.url) as session:
        yield session


@pytest.mark.parametrize(
    "path", ["/engines/v1/chat/completions", "/v1/embeddings", "/engines/llama.cpp/v1/completions"]
)
async def test_openai_routes_answer_400_invalid_json(http: aiohttp.ClientSession, stack: Stack, path: str) -> None:
    async with http.post(path, data=deep(), headers=JSON) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        error = (await resp.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"
    assert "nested too deeply" in error["message"]
    assert "Traceback" not in stack.router.output()


@pytest.mark.parametrize("root", ["/anthropic", "/olla/anthropic"])
async def test_anthropic_routes_answer_400_in_anthropic_shape(http: aiohttp.ClientSession, root: str) -> None:
    async with http.post(f"{root}/v1/messages", data=deep(), headers=JSON) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "nested too deeply" in body["error"]["message"]


async def test_a_readable_model_with_a_deep_body_is_refused_by_the_endpoint_as_json(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    body = b'{"model":"' + MODEL.encode() + b'","messages":[],"x":' + deep() + b"}"
    async with http.post("/engines/v1/chat/completions", data=body, headers=JSON) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"  # DMR's text/plain 400, normalised
        error = (await resp.json())["error"]
    assert error["message"] == "invalid request"
    # The router is still serving, and wrote no traceback.
    async with http.post("/engines/v1/chat/completions", json=chat()) as resp:
        assert resp.status == 200
    assert stack.router.alive()
    assert "Traceback" not in stack.router.output()
    assert "RecursionError" not in stack.router.output()
