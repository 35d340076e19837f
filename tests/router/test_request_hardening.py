"""Input limits (JSON depth, number of messages, string sizes; each its own status) and request-line and
header games, on a real router, some over raw sockets: absolute-form targets, `..`, encoded slashes, `Host`,
`Forwarded`/`X-Forwarded-*`, conflicting `Content-Length`/`Transfer-Encoding`. Nothing reaches anything but the
configured endpoint, and a refused request reaches nothing at all.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import ProcessFactory, RedisServer
from tests.router.support import EmuSpec, Stack, build_stack, chat

LIMITS = {"PIER_MAX_JSON_DEPTH": "32", "PIER_MAX_MESSAGES": "8", "PIER_MAX_STRING_CHARS": "1000"}
RAW_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")], router_extra=LIMITS)


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=stack.url) as session:
        yield session


def nested(levels: int) -> Any:
    """A field value that makes the body `levels` deep: the body object is level 1, each list one more."""
    value: Any = "x"
    for _ in range(levels - 1):
        value = [value]
    return value


async def reached(stack: Stack, marker: str) -> list[dict[str, Any]]:
    return [r for r in await stack.emu("e1").requests("") if marker in json.dumps(r)]


def marked(marker: str, **extra: Any) -> dict[str, Any]:
    return chat(messages=[{"role": "user", "content": marker}], **extra)


async def test_json_depth_limit(http: aiohttp.ClientSession, stack: Stack) -> None:
    ok, deep = uuid.uuid4().hex, uuid.uuid4().hex
    async with http.post("/v1/chat/completions", json=marked(ok, metadata=nested(32))) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post("/v1/chat/completions", json=marked(deep, metadata=nested(33))) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "json_too_deep"
    assert "PIER_MAX_JSON_DEPTH" in error["message"]
    body = {"model": "ai/smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": deep}]}
    body["metadata"] = nested(40)
    async with http.post("/v1/messages", json=body) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"  # Anthropic's shape
    # Past the parser's own limit: still a 400, never a 500.
    raw = b'{"model": "ai/smollm2", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with http.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
    assert len(await reached(stack, ok)) == 1
    assert await reached(stack, deep) == []


async def test_messages_limit(http: aiohttp.ClientSession, stack: Stack) -> None:
    marker = uuid.uuid4().hex
    eight = [{"role": "user", "content": "hi"}] * 8
    async with http.post("/v1/chat/completions", json=chat(messages=eight)) as resp:
        assert resp.status == 200
    nine = [{"role": "user", "content": marker}] * 9
    async with http.post("/engines/v1/chat/completions", json=chat(messages=nine)) as resp:
        assert resp.status == 422
        error = (await resp.json())["error"]
    assert error["code"] == "too_many_messages"
    assert "PIER_MAX_MESSAGES" in error["message"]
    body = {"model": "ai/smollm2", "max_tokens": 8, "messages": nine}
    async with http.post("/anthropic/v1/messages", json=body) as resp:
        assert resp.status == 422
        assert (await resp.json())["type"] == "error"
    assert await reached(stack, marker) == []


async def test_string_size_limit(http: aiohttp.ClientSession, stack: Stack) -> None:
    marker = uuid.uuid4().hex
    async with http.post("/v1/chat/completions", json=marked("a" * 1000)) as resp:
        assert resp.status == 200
    async with http.post("/v1/chat/completions", json=marked(marker + "a" * 1000)) as resp:
        assert resp.status == 413
        error = (await resp.json())["error"]
    assert error["code"] == "string_too_long"
    assert "PIER_MAX_STRING_CHARS" in error["message"]
    async with http.post("/v1/chat/completions", json=chat() | {marker + "k" * 1000: 1}) as resp:
        assert resp.status == 413  # keys are strings too
    body = {"model": "ai/smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": marker * 40}]}
    async with http.post("/v1/messages", json=body) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"]["type"] == "request_too_large"
    assert await reached(stack, marker) == []


# --- raw requests -------------------------------------------------------------------------------------------


async def raw(stack: Stack, request: bytes, *, until_close: bool = False) -> bytes:
    """Send `request` as it is on a fresh connection; everything the router answers until it closes (or, unless
    `until_close`, until one complete response)."""
    port = stack.router.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        async with asyncio.timeout(RAW_TIMEOUT_S):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return data
                data += chunk
                if not until_close and _complete(data):
                    return data
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    if data.startswith(b"HTTP/1.1 100 "):  # an interim answer: the final one follows
        data = data.partition(b"\r\n\r\n")[2]
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def post(target: str, body: bytes, *extra: str, host: str = "pier") -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"Host: {host}", "Content-Type: application/json", *extra]
    if not any(x.lower().startswith(("content-length", "transfer-encoding")) for x in extra):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_absolute_form_target_and_host_reach_only_the_configured_endpoint(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    body = json.dumps(marked(marker)).encode()
    answer = await raw(stack, post("http://169.254.169.254/v1/chat/completions", body, host="169.254.169.254"))
    assert status_of(answer) == 200, answer[:300]
    (record,) = await reached(stack, marker)
    emu_port = stack.emu("e1").url.rsplit(":", 1)[1]
    assert record["headers"]["Host"] == f"127.0.0.1:{emu_port}"  # the endpoint's own, never the client's
    assert record["path"] == "/engines/v1/chat/completions"  # the endpoint's path, from the config


@pytest.mark.parametrize(
    "target",
    [
        "/v1/../internal/status",
        "/v1/chat/completions/../../../models/create",
        "/v1/chat%2Fcompletions",
        "/v1%2Fchat%2Fcompletions",
        "/engines/..%2F..%2Fetc/v1/chat/completions",
        "/engines/%2E%2E/v1/chat/completions",
        "//169.254.169.254/v1/chat/completions",
    ],
)
async def test_dot_segments_and_encoded_slashes_reach_no_endpoint(stack: Stack, target: str) -> None:
    marker = uuid.uuid4().hex
    answer = await raw(stack, post(target, json.dumps(marked(marker)).encode()))
    assert status_of(answer) in (400, 404, 405), answer[:300]
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert json.loads(payload)["error"]["message"]
    assert await reached(stack, marker) == []


async def test_forwarding_claims_stay_behind(http: aiohttp.ClientSession, stack: Stack) -> None:
    marker = uuid.uuid4().hex
    claims = {
        "Forwarded": "for=10.0.0.1;host=evil.example;proto=https",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/admin",
        "X-Real-IP": "10.0.0.1",
        "X-Original-URL": "/internal/status",
    }
    async with http.post("/v1/chat/completions", json=marked(marker), headers=claims) as resp:
        assert resp.status == 200
    (record,) = await reached(stack, marker)
    sent = {name.lower() for name in record["headers"]}
    assert not sent & {name.lower() for name in claims}


@pytest.mark.parametrize(
    "framing",
    [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked", "Content-Length: 5"),
        ("Content-Length: 5", "Content-Length: 6"),
        ("Content-Length: 5, 6",),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: identity"),
        ("Transfer-Encoding: xchunked",),
        ("Transfer-Encoding: chunked, identity",),
        ("Transfer-Encoding : chunked",),
        ("Content-Length: -1",),
        ("Content-Length: +5",),
    ],
)
async def test_conflicting_framing_is_refused_and_smuggles_nothing(stack: Stack, framing: tuple[str, ...]) -> None:
    marker = uuid.uuid4().hex
    smuggled = post("/v1/chat/completions", json.dumps(marked(marker)).encode())
    payload = b"0\r\n\r\n" + smuggled  # read as chunked: an empty body, then a second request
    answer = await raw(stack, post("/v1/chat/completions", payload, *framing))
    assert status_of(answer) in (400, 501), answer[:300]
    assert answer.count(b"HTTP/1.") == 1  # one answer: the second request was never read as one
    assert await reached(stack, marker) == []


async def test_a_conflicting_request_closes_the_connection(stack: Stack) -> None:
    request = post("/v1/chat/completions", b"0\r\n\r\n", "Content-Length: 5", "Transfer-Encoding: chunked")
    answer = await raw(stack, request + post("/v1/models", b""), until_close=True)  # a timeout if left open
    assert status_of(answer) == 400
    assert answer.count(b"HTTP/1.") == 1


async def test_an_unknown_expectation_is_417_in_json(stack: Stack) -> None:
    body = json.dumps(chat()).encode()
    answer = await raw(stack, post("/v1/messages", body, "Expect: 200-ok"))
    assert status_of(answer) == 417
    payload = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert payload["type"] == "error"  # Anthropic's shape on an Anthropic route
    answer = await raw(stack, post("/v1/chat/completions", body, "Expect: 100-continue"))
    assert b"HTTP/1.1 100 Continue" in answer
    assert b"HTTP/1.1 200" in answer
