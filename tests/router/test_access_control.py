"""Client keys on a real router: the official openai and anthropic SDKs with their standard `api_key`, and
every refusal (no key, wrong key, a model outside the key's globs, /internal from outside) with its status and
a body in the route's API shape. Keys come from a YAML file, a secret file it names, and the environment.

One stack for the module; the router trusts 127.0.0.1 as a proxy, so `X-Forwarded-For` plays a client from
outside the internal networks. Tests only read (the emulator's request log is checked per marker).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from tests.harness import ROOT, ProcessFactory, RedisServer
from tests.router.support import MODEL, EmuSpec, Stack, base_env, build_stack

KEY_A = "sk-pier-team-a-" + uuid.uuid4().hex  # every model
KEY_B = "sk-pier-team-b-" + uuid.uuid4().hex  # only ai/gemma3*, from a secret file
KEY_ENV = "sk-pier-inline-" + uuid.uuid4().hex  # from PIER_API_KEYS
ADMIN = "sk-pier-admin-" + uuid.uuid4().hex
OUTSIDE = {"X-Forwarded-For": "203.0.113.50"}  # the router trusts 127.0.0.1: this is the client's address


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    secret = module_dir / "team_b.key"
    secret.write_text(KEY_B + "\n", encoding="utf-8")
    keys = module_dir / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{name: team-a, key: {KEY_A}}}\n"
        f"  - {{name: team-b, key_file: {secret}, models: ['ai/gemma3*']}}\n",
        encoding="utf-8",
    )
    extra = {
        "PIER_ACCESS_CONTROL": "true",
        "PIER_API_KEYS_FILE": str(keys),
        "PIER_API_KEYS": f"inline={KEY_ENV}",
        "PIER_ADMIN_KEY": ADMIN,
        "PIER_TRUSTED_PROXIES": "127.0.0.1",
        "PIER_LOG_LEVEL": "debug",
    }
    return build_stack(module_procs, module_dir, module_redis.url, [EmuSpec("e1")], router_extra=extra)


_OPEN: list[openai.OpenAI | anthropic.Anthropic] = []


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def oai(stack: Stack, key: str, base: str = "/v1") -> openai.OpenAI:
    client = openai.OpenAI(base_url=f"{stack.url}{base}", api_key=key, max_retries=0, timeout=30)
    _OPEN.append(client)
    return client


def claude(stack: Stack, key: str, base: str = "") -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=f"{stack.url}{base}", api_key=key, max_retries=0, timeout=30)
    _OPEN.append(client)
    return client


HELLO: list[Any] = [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize("base", ["/v1", "/engines/v1", "/olla/dmr/engines/v1"])
def test_openai_sdk_with_a_key_works(stack: Stack, base: str) -> None:
    client = oai(stack, KEY_A, base)
    reply = client.chat.completions.create(model="ai/smollm2", messages=HELLO)
    assert reply.choices[0].message.content
    chunks = list(client.chat.completions.create(model="ai/smollm2", messages=HELLO, stream=True))
    assert chunks
    assert MODEL in [m.id for m in client.models.list()]


@pytest.mark.parametrize("base", ["", "/anthropic", "/olla/anthropic"])
def test_anthropic_sdk_with_a_key_works(stack: Stack, base: str) -> None:
    client = claude(stack, KEY_ENV, base)
    message = client.messages.create(model="ai/smollm2", max_tokens=32, messages=HELLO)
    assert message.content
    with client.messages.stream(model="ai/smollm2", max_tokens=32, messages=HELLO) as stream:
        assert stream.get_final_message().content


def test_openai_sdk_wrong_key_is_401_in_openai_shape(stack: Stack) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        oai(stack, "sk-not-a-real-key-000000").chat.completions.create(model="ai/smollm2", messages=HELLO)
    assert caught.value.status_code == 401
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_api_key"
    assert "sk-not-a-real-key" not in json.dumps(body)


def test_anthropic_sdk_wrong_key_is_401_in_anthropic_shape(stack: Stack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        claude(stack, "sk-not-a-real-key-000000").messages.create(model="ai/smollm2", max_tokens=8, messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "the API key is not valid"},
    }


def test_model_outside_the_keys_globs_is_403_and_reaches_no_endpoint(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    with pytest.raises(openai.PermissionDeniedError) as o:
        oai(stack, KEY_B).chat.completions.create(model="ai/smollm2", messages=[{"role": "user", "content": marker}])
    assert isinstance(o.value.body, dict)
    assert o.value.body["code"] == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError) as a:
        claude(stack, KEY_B).messages.create(
            model="smollm2", max_tokens=8, messages=[{"role": "user", "content": marker}]
        )
    assert isinstance(a.value.body, dict)
    assert a.value.body["error"]["type"] == "permission_error"


async def test_model_refusal_reached_no_endpoint(stack: Stack) -> None:
    marker = uuid.uuid4().hex
    body = {"model": "ai/smollm2", "messages": [{"role": "user", "content": marker}]}
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post("/v1/chat/completions", json=body, headers={"x-api-key": KEY_B}) as resp:
            assert resp.status == 403
        body["model"] = "ai/gemma3"  # allowed by the glob; not served here: the router's own 404 says so
        async with http.post("/v1/chat/completions", json=body, headers={"x-api-key": KEY_B}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
    assert not [r for r in await stack.emu("e1").requests() if marker in json.dumps(r)]


@pytest.mark.parametrize(
    ("method", "path", "shape"),
    [
        ("POST", "/v1/chat/completions", "openai"),
        ("POST", "/engines/v1/completions", "openai"),
        ("POST", "/engines/llama.cpp/v1/chat/completions", "openai"),
        ("GET", "/engines/v1/models", "openai"),
        ("GET", "/models", "openai"),
        ("GET", "/engines/ps", "openai"),
        ("GET", "/olla/models", "openai"),
        ("POST", "/olla/dmr/v1/chat/completions", "openai"),
        ("GET", "/v1/models", "openai"),
        ("POST", "/v1/messages", "anthropic"),
        ("POST", "/anthropic/v1/messages/count_tokens", "anthropic"),
        ("POST", "/olla/anthropic/v1/messages", "anthropic"),
        ("GET", "/nowhere", "openai"),  # no key: 401 before the 404 (routes are not revealed)
        ("GET", "/v1/messages/nowhere", "anthropic"),  # no route: the shape the router's own 404 would have
        ("GET", "/v1/models", "anthropic-version"),  # the Anthropic SDK's models.list()
    ],
)
async def test_missing_key_is_401_on_every_family(stack: Stack, method: str, path: str, shape: str) -> None:
    headers = {"anthropic-version": "2023-06-01"} if shape == "anthropic-version" else {}
    async with (
        aiohttp.ClientSession(base_url=stack.url) as http,
        http.request(method, path, json={"model": "ai/smollm2", "messages": HELLO}, headers=headers) as resp,
    ):
        assert resp.status == 401
        assert resp.content_type == "application/json"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        body = await resp.json()
    if shape.startswith("anthropic"):
        assert body["type"] == "error"
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["error"]["code"] == "missing_api_key"
        assert body["error"]["type"] == "invalid_request_error"


async def test_internal_routes_by_address_or_admin_key(stack: Stack) -> None:
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.get("/internal/status") as resp:  # loopback: open without a key
            assert resp.status == 200
        async with http.get("/internal/status", headers=OUTSIDE) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "internal_forbidden"
        async with http.get("/internal/status", headers={**OUTSIDE, "Authorization": f"Bearer {KEY_A}"}) as resp:
            assert resp.status == 403  # a client key does not open /internal
        async with http.get("/internal/status", headers={**OUTSIDE, "x-api-key": "sk-wrong-key-123456"}) as resp:
            assert resp.status == 401
        async with http.get("/internal/status/endpoints", headers={**OUTSIDE, "x-api-key": ADMIN}) as resp:
            assert resp.status == 200
            assert (await resp.json())["endpoints"][0]["name"] == "e1"
        # Spelled otherwise, the same route gets the same rule (judged by the route matched, not the text).
        async with http.get("/%69nternal/status", headers=OUTSIDE) as resp:
            assert resp.status == 403
        async with http.get("/internal/health", headers={"X-Forwarded-For": "10.1.2.3"}) as resp:
            assert resp.status == 200  # a private address behind the trusted proxy


def test_healthcheck_works_with_access_control_on(stack: Stack) -> None:
    env = {**base_env(), **stack.router.env}
    done = subprocess.run(
        [sys.executable, "-m", "services.router", "--check"], cwd=ROOT, env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_key_appears_in_the_router_output(stack: Stack) -> None:
    output = stack.router.output()
    assert "refused" in output  # the refusals above were logged (at info), by name or outcome only
    for key in (KEY_A, KEY_B, KEY_ENV, ADMIN):
        assert key not in output


@pytest.mark.parametrize(
    ("path", "empty"),
    [
        ("/v1/models", lambda body: body["data"] == []),
        ("/engines/v1/models", lambda body: body["data"] == []),
        ("/anthropic/v1/models", lambda body: body["data"] == [] and body["first_id"] is None),
        ("/olla/models", lambda body: body["data"] == []),
        ("/models", lambda body: body == []),
        ("/engines/ps", lambda body: body == []),
    ],
)
async def test_a_restricted_key_sees_only_its_models(stack: Stack, path: str, empty: Any) -> None:
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.get(path, headers={"x-api-key": KEY_A}) as resp:
            assert resp.status == 200
            everything = await resp.json()
        async with http.get(path, headers={"x-api-key": KEY_B}) as resp:  # ai/gemma3* only; e1 serves smollm2
            assert resp.status == 200
            assert empty(await resp.json())
    if path != "/engines/ps":  # nothing may be loaded yet
        assert not empty(everything)


async def test_a_restricted_key_gets_404_for_a_model_outside_its_globs(stack: Stack) -> None:
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.get("/v1/models/ai/smollm2", headers={"x-api-key": KEY_A}) as resp:
            assert resp.status == 200
        async with http.get("/v1/models/ai/smollm2", headers={"x-api-key": KEY_B}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "model_not_found"
        async with http.get("/models/ai/smollm2", headers={"x-api-key": KEY_B}) as resp:
            assert resp.status == 404
        async with http.get("/anthropic/v1/models/ai/smollm2", headers={"x-api-key": KEY_B}) as resp:
            assert resp.status == 404
            assert (await resp.json())["type"] == "error"
