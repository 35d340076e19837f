"""Anthropic requests on the router's one proxy path, observed from outside: bad bodies refused with the field
named, endpoint errors in Anthropic's shape, failover, a cut translated stream, pings on long gaps, events
leaving as their chunks arrive, and a client that leaves mid-stream. One stack: `dmr` (native route),
`oai` and `oai2` (openai-compatible, no native route, both serving gemma3; `oai2` at a lower priority)."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from anthropic import Anthropic, APIStatusError

from tests.harness import ProcessFactory, RedisServer, wait_for
from tests.router.support import EmuSpec, Stack, build_stack, endpoints_status, wait_routable
from tests.router.test_anthropic_translation import BAD_BODIES

TRANS = "ai/gemma3"
PING_S = 0.15
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    oai_args = ("--models", TRANS, "--no-anthropic")
    return build_stack(
        module_procs,
        module_dir,
        module_redis.url,
        [
            EmuSpec("dmr", 100, ("--models", "ai/smollm2"), model="ai/smollm2:latest"),
            EmuSpec("oai", 100, oai_args, entry={"type": "openai-compatible"}, model=f"{TRANS}:latest"),
            EmuSpec("oai2", 50, oai_args, entry={"type": "openai-compatible"}, model=f"{TRANS}:latest"),
        ],
        router_extra={"PIER_ANTHROPIC_PING_INTERVAL_S": str(PING_S)},
    )


@pytest.fixture(autouse=True)
async def clean(stack: Stack) -> AsyncIterator[None]:
    yield
    for emu in stack.emus.values():
        await emu.configure(chunk_interval_ms=10.0, chunks=5)
    await stack.reset_emulators()


def request(stream: bool = False, **extra: Any) -> dict[str, Any]:
    body = {"model": TRANS, "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream:
        body["stream"] = True
    return body


async def events_of(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[float, str, dict[str, Any]]]:
    """(arrival time, event name, data) as each event arrives."""
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield time.monotonic(), name, json.loads(line[len("data: ") :])


@pytest.mark.parametrize("path", ["/v1/messages", "/anthropic/v1/messages", "/olla/anthropic/v1/messages"])
@pytest.mark.parametrize(("case", "body", "message"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_invalid_body_is_refused_naming_the_field(
    stack: Stack, path: str, case: str, body: dict[str, Any], message: str
) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}{path}", json=body) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["message"].startswith(message)
    assert await stack.emu("oai").requests("/") == []  # refused before any endpoint saw it


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "request body is empty"), (b"{nope", "request body is not valid JSON"), (b"[1]", "must be a JSON object")],
)
@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_unreadable_body_is_an_anthropic_400(stack: Stack, path: str, raw: bytes, message: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}{path}", data=raw) as resp:
        assert resp.status == 400
        data = await resp.json()
    assert data["type"] == "error"
    assert message in data["error"]["message"]


async def test_count_tokens_body_is_checked_too(stack: Stack) -> None:
    url = f"{stack.url}/v1/messages/count_tokens"
    async with aiohttp.ClientSession() as http, http.post(url, json={"model": TRANS}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["message"] == "messages: Field required"


async def test_endpoint_error_in_translation_is_anthropic_shaped(stack: Stack) -> None:
    await stack.emu("oai").fault(mode="status", status=400, message="context size exceeded", paths=[CHAT])
    with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client, pytest.raises(APIStatusError) as caught:
        client.messages.create(**request())
    assert caught.value.status_code == 400
    assert caught.value.response.headers["X-Pier-Mode"] == "translation"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "context size exceeded"},
    }


async def test_translation_fails_over_before_the_first_byte(stack: Stack) -> None:
    oai = stack.emu("oai")
    await oai.fault(mode="refuse")
    try:
        with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client:
            raw = client.messages.with_raw_response.create(**request())
        assert raw.headers["X-Pier-Endpoint"] == "oai2"
        assert raw.headers["X-Pier-Mode"] == "translation"
        # 2, or 3 when a pooled keep-alive connection to oai was tried first (one fresh retry on a closed one).
        assert raw.headers["X-Pier-Attempts"] in ("2", "3")
        assert raw.parse().content[0].text.startswith("Hello from oai2")
    finally:
        await oai.reset()
        await wait_routable(stack.url, ["oai"], model=f"{TRANS}:latest")  # the later tests need it back


async def test_endpoint_503_is_relayed_not_retried(stack: Stack) -> None:
    """As on the OpenAI routes: the endpoint's own 503 reaches the client (in Anthropic's shape)."""
    await stack.emu("oai").fault(mode="status", status=503, paths=[CHAT], count=1)
    with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client, pytest.raises(APIStatusError) as caught:
        client.messages.create(**request())
    assert caught.value.status_code == 503
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "service unavailable"},
    }


async def test_cut_translated_stream_ends_with_an_error_event(stack: Stack) -> None:
    await stack.emu("oai").fault(mode="drop", drop_after=3, paths=[CHAT])
    seen: list[str] = []
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}/v1/messages", json=request(True)) as resp:
        assert resp.status == 200
        with contextlib.suppress(aiohttp.ClientPayloadError):
            async for _, name, data in events_of(resp):
                seen.append(name)
                if name == "error":
                    assert "cut the response" in data["error"]["message"]
    assert seen[0] == "message_start"
    assert seen[-1] == "error"
    assert "message_stop" not in seen
    with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client:
        await stack.emu("oai").fault(mode="drop", drop_after=3, paths=[CHAT])
        with pytest.raises(APIStatusError, match="cut the response"), client.messages.stream(**request()) as stream:
            stream.get_final_message()


async def test_events_leave_as_chunks_arrive_with_pings_in_long_gaps(stack: Stack) -> None:
    """Chunks 0.5 s apart: each delta arrives on its own (no buffering) and pings fill the gaps."""
    await stack.emu("oai").configure(chunk_interval_ms=500.0, chunks=3)
    deltas: list[float] = []
    names: list[str] = []
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}/v1/messages", json=request(True)) as resp:
        async for at, name, _ in events_of(resp):
            names.append(name)
            if name == "content_block_delta":
                deltas.append(at)
    assert len(deltas) == 3
    gaps = [b - a for a, b in itertools.pairwise(deltas)]
    assert min(gaps) > 0.3, gaps  # one by one, as the endpoint produced them
    assert names.count("ping") >= 2
    without_pings = [n for n in names if n != "ping"]
    assert without_pings == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


async def test_client_leaving_a_translated_stream_stops_the_endpoint(stack: Stack) -> None:
    oai = stack.emu("oai")
    await oai.configure(chunk_interval_ms=250.0, chunks=40)
    async with aiohttp.ClientSession() as http:
        resp = await http.post(f"{stack.url}/v1/messages", json=request(True))
        assert resp.status == 200
        async for _, name, _ in events_of(resp):
            if name == "content_block_delta":
                break
        resp.close()

        async def gone() -> bool:
            records = await oai.requests(CHAT)
            return bool(records) and all(r["disconnected"] for r in records)

        await wait_for(gone, timeout_s=5, what="the endpoint to see the router leave")
    assert (await oai.state())["counters"]["streams_completed"] == 0
    await wait_for(
        lambda: endpoints_status(stack.url)["oai"]["in_flight"] == 0, timeout_s=5, what="the slot to be released"
    )


async def test_passthrough_is_marked_and_untouched(stack: Stack) -> None:
    body = request(model="ai/smollm2", stop_sequences=["chunk 2"])
    async with aiohttp.ClientSession() as http, http.post(f"{stack.url}/v1/messages", json=body) as resp:
        assert resp.headers["X-Pier-Mode"] == "passthrough"
        data = await resp.json()
    (record,) = await stack.emu("dmr").requests("/anthropic/")
    assert record["body"] == body  # as the client sent it
    assert data["stop_reason"] == "stop_sequence"
    assert data["stop_sequence"] == "chunk 2"


async def test_stop_sequence_in_translation(stack: Stack) -> None:
    for stream in (False, True):
        with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client:
            if stream:
                with client.messages.stream(**request(stop_sequences=["chunk 2"])) as s:
                    message = s.get_final_message()
            else:
                message = client.messages.create(**request(stop_sequences=["chunk 2"]))
        assert message.stop_reason == "stop_sequence"
        assert message.stop_sequence == "chunk 2"
        assert message.content[0].text == "Hello from oai (ai/gemma3). chunk 1. "  # type: ignore[union-attr]
    (record, _) = await stack.emu("oai").requests(CHAT)
    assert record["body"]["stop"] == ["chunk 2"]


async def test_thinking_in_translation(stack: Stack) -> None:
    await stack.emu("oai").configure(reasoning=True)
    try:
        with Anthropic(base_url=stack.url, api_key="x", max_retries=0) as client:
            message = client.messages.create(**request())
            with client.messages.stream(**request()) as s:
                kinds = [event.type for event in s]
                streamed = s.get_final_message()
    finally:
        await stack.emu("oai").configure(reasoning=False)
    for answer in (message, streamed):
        assert [b.type for b in answer.content] == ["thinking", "text"]
        assert answer.content[0].thinking == "Thinking about the request."  # type: ignore[union-attr]
    assert "thinking" in kinds
