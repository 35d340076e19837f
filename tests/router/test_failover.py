"""Failover, the 503 "Loading model" retry, no retry once bytes were sent, and circuit breakers.

Each test has its own stack (Redis, two emulators e1 > e2 by priority, the health worker, the router): the
tests break endpoints on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import aiohttp
import openai
import pytest
from openai.types.chat import ChatCompletionChunk
from redis.asyncio import Redis

from shared import keys, statestore
from shared.state import EventKind
from tests.harness import ProcessFactory, wait_for
from tests.router.support import EmuSpec, Stack, build_stack, chat, endpoints_status, read_sse

CHAT = "/engines/v1/chat/completions"


def two_endpoints(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, e1_entry: dict[str, str] | None = None, **router: str
) -> Stack:
    specs = [EmuSpec("e1", 100, (), e1_entry or {}), EmuSpec("e2", 50)]
    return build_stack(procs, tmp_path, redis_url, specs, router_extra=router)


async def test_failover_when_the_top_endpoint_refuses(
    procs: ProcessFactory, tmp_path: Path, redis_url: str, redis: Redis
) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url)
    await stack.emu("e1").fault(mode="refuse")
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["X-Pier-Endpoint"] == "e2"
            assert resp.headers["X-Pier-Attempts"] == "2"
            assert "Hello from e2" in (await resp.json())["choices"][0]["message"]["content"]
        # Marked down at once: the next request does not try e1 again.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Endpoint"] == "e2"
            assert resp.headers["X-Pier-Attempts"] == "1"
    assert not endpoints_status(stack.url)["e1"]["routable"]
    assert len(await stack.emu("e2").requests()) == 2

    # The passive signal reached the health worker's stream.
    signals = await statestore.read_events(redis, "0-0", stream=keys.SIGNALS)
    assert any(event.kind is EventKind.ENDPOINT_DOWN and event.endpoint == "e1" for _, event in signals)


async def test_response_header_timeout_fails_over(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url, {"response_header_timeout": "1s"})
    await stack.emu("e1").fault(mode="hang", paths=["/engines/v1/chat"])
    async with aiohttp.ClientSession(base_url=stack.url) as http, http.post(CHAT, json=chat()) as resp:
        assert resp.status == 200
        assert resp.headers["X-Pier-Endpoint"] == "e2"
        assert resp.headers["X-Pier-Attempts"] == "2"
    assert len(await stack.emu("e1").requests()) == 1


async def test_no_retry_after_a_mid_stream_drop(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url)
    e1, e2 = stack.emu("e1"), stack.emu("e2")
    await e1.fault(mode="drop", drop_after=2, paths=["/engines/v1/chat"])

    # Raw view: the events sent so far, then an error event, then a broken stream (no clean end).
    seen: list[str] = []
    async with aiohttp.ClientSession(base_url=stack.url) as http, http.post(CHAT, json=chat(stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Pier-Endpoint"] == "e1"
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_sse_into(resp, seen)
    assert len(seen) == 3
    assert "Hello from e1" in seen[1]
    assert '"code": "stream_cut"' in seen[2]

    # The SDK's view: it raises instead of returning a short answer as if it were complete.
    received: list[str] = []
    with openai.OpenAI(base_url=f"{stack.url}/engines/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError):
            consume(stream, received)
    assert "".join(received) == "Hello from e1 (smollm2)."

    assert len(await e1.requests()) == 2  # one per client request: never retried
    assert await e2.requests() == []


def consume(stream: Iterable[ChatCompletionChunk], received: list[str]) -> None:
    for chunk in stream:
        received.append(chunk.choices[0].delta.content or "")


async def read_sse_into(resp: aiohttp.ClientResponse, out: list[str]) -> None:
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            out.append(line[len("data: ") :])


async def test_loading_503_is_retried_on_the_same_endpoint(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url, PIER_LOADING_RETRY_INITIAL_S="0.1")
    e1 = stack.emu("e1")
    await e1.fault(mode="loading", count=2, paths=["/engines/v1/chat"])
    async with aiohttp.ClientSession(base_url=stack.url) as http, http.post(CHAT, json=chat(stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["X-Pier-Endpoint"] == "e1"
        assert resp.headers["X-Pier-Attempts"] == "3"
        events = await read_sse(resp)
    assert events[-1] == "[DONE]"
    records = await e1.requests()
    assert [r["fault"] for r in records] == ["loading", "loading", None]
    assert await stack.emu("e2").requests() == []


async def test_loading_past_the_deadline_answers_the_503(procs: ProcessFactory, tmp_path: Path, redis_url: str) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url, {"request_timeout": "2s"}, PIER_LOADING_RETRY_INITIAL_S="0.2")
    await stack.emu("e1").fault(mode="loading", paths=["/engines/v1/chat"])
    async with aiohttp.ClientSession(base_url=stack.url) as http, http.post(CHAT, json=chat()) as resp:
        assert resp.status == 503
        body = await resp.json()
        assert resp.headers["X-Pier-Endpoint"] == "e1"
        assert int(resp.headers["X-Pier-Attempts"]) >= 2
    assert body["error"]["message"] == "Loading model"
    assert await stack.emu("e2").requests() == []
    # Loading is not a failure of the endpoint: its circuit stays closed.
    assert endpoints_status(stack.url)["e1"]["circuit"]["state"] == "closed"


async def test_circuit_opens_after_failures_and_closes_after_a_good_trial(
    procs: ProcessFactory, tmp_path: Path, redis_url: str
) -> None:
    stack = two_endpoints(procs, tmp_path, redis_url, PIER_CIRCUIT_THRESHOLD="2", PIER_CIRCUIT_OPEN_S="2")
    e1 = stack.emu("e1")
    await e1.fault(mode="status", status=503, paths=["/engines/v1/chat"])
    async with aiohttp.ClientSession(base_url=stack.url) as http:
        for _ in range(2):
            async with http.post(CHAT, json=chat()) as resp:
                assert resp.status == 503  # the endpoint's answer, passed on (bytes may not be retried)
                assert resp.headers["X-Pier-Endpoint"] == "e1"
                assert (await resp.json())["error"]["message"] == "service unavailable"
        circuit = endpoints_status(stack.url)["e1"]["circuit"]
        assert circuit["state"] == "open"
        assert circuit["failures"] == 2
        # Open: requests go to e2 without trying e1.
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Endpoint"] == "e2"
            assert resp.headers["X-Pier-Attempts"] == "1"
        assert len(await e1.requests()) == 2

        await e1.reset()  # e1 recovers
        await wait_for(
            lambda: endpoints_status(stack.url)["e1"]["circuit"]["state"] == "half_open",
            timeout_s=15,
            what="e1's circuit to turn half-open",
        )
        async with http.post(CHAT, json=chat()) as resp:
            assert resp.status == 200
            assert resp.headers["X-Pier-Endpoint"] == "e1"  # the half-open trial
    assert endpoints_status(stack.url)["e1"]["circuit"]["state"] == "closed"
