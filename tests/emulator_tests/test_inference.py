"""OpenAI-shaped inference through the official `openai` SDK (sync and async) and raw SSE."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

from tests.emulator import EmulatorServer
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import admin_get, chat_body, ps, sse_events

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


def sync_client(emu: EmulatorServer, prefix: str = "/engines/v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.url + prefix, api_key="unused", max_retries=0, timeout=30)


def async_client(emu: EmulatorServer, prefix: str = "/engines/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.url + prefix, api_key="unused", max_retries=0, timeout=30)


async def test_sync_sdk_chat_names_the_emulator(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(name="east", chunks=3)

    def call() -> tuple[openai.types.chat.ChatCompletion, str]:
        with sync_client(emu) as client:
            raw = client.chat.completions.with_raw_response.create(model="ai/smollm2", messages=MESSAGES)
            return raw.parse(), raw.headers["X-Emulator-Name"]

    # The sync client blocks: run it off the loop that serves the emulator.
    completion, header = await asyncio.to_thread(call)
    assert header == "east"
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "ai/smollm2"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello from east (ai/smollm2). chunk 1. chunk 2."
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 3


async def test_async_sdk_stream_with_usage(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(name="west", chunks=4)
    async with async_client(emu, "/v1") as client:
        stream = await client.chat.completions.create(
            model="smollm2", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from west (smollm2). chunk 1. chunk 2. chunk 3."
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert len({c.id for c in chunks}) == 1


async def test_raw_stream_events_timings_and_done(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=3)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    async with http.post(f"{emu.url}/engines/llama.cpp/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/event-stream"
        events = await sse_events(resp)
    assert events[-1] == (None, "[DONE]")
    payloads = [json.loads(data) for _, data in events[:-1]]
    # role chunk, 3 content chunks, finish chunk, usage chunk
    assert len(payloads) == 6
    finish = payloads[-2]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert set(finish["timings"]) >= {"prompt_n", "predicted_n", "predicted_per_second"}
    assert "timings" not in payloads[1]
    assert payloads[-1]["choices"] == []
    assert payloads[-1]["usage"]["completion_tokens"] == 3
    without_usage = chat_body(stream=True)
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=without_usage) as resp:
        events = await sse_events(resp)
    assert len(events) == 6
    assert all(json.loads(d).get("choices") != [] for _, d in events[:-1])


async def test_stream_events_are_flushed_one_by_one(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    interval_s = 0.05
    emu = await start_emulator(chunks=4, chunk_interval_ms=interval_s * 1000)
    arrivals: list[float] = []
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(stream=True)) as resp:
        async for line in resp.content:
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic())
    # role + 4 content + finish + [DONE] = 7 events, each at least one interval after the one before
    assert len(arrivals) == 7
    assert arrivals[-1] - arrivals[0] >= 6 * interval_s * 0.9


async def test_legacy_completions(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=2)
    async with async_client(emu) as client:
        done = await client.completions.create(model="ai/smollm2", prompt="Once upon a time")
        assert done.object == "text_completion"
        assert done.choices[0].text == "Hello from dmr (ai/smollm2). chunk 1."
        stream = await client.completions.create(model="ai/smollm2", prompt="Once", stream=True)
        pieces = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(pieces) == "Hello from dmr (ai/smollm2). chunk 1."


async def test_max_tokens_truncates_with_length(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=5)
    async with async_client(emu) as client:
        done = await client.chat.completions.create(model="ai/smollm2", messages=MESSAGES, max_tokens=2)
    assert done.choices[0].finish_reason == "length"
    assert done.choices[0].message.content == "Hello from dmr (ai/smollm2). chunk 1."


async def test_embeddings(http: aiohttp.ClientSession, start_emulator: StartEmulator) -> None:
    emu = await start_emulator(models=["ai/mxbai-embed-large"])
    async with async_client(emu) as client:
        one = await client.embeddings.create(model="ai/mxbai-embed-large", input="hello")
        again = await client.embeddings.create(model="ai/mxbai-embed-large", input="hello")
        batch = await client.embeddings.create(model="ai/mxbai-embed-large", input=["hello", "world"])
    vector = one.data[0].embedding
    assert len(vector) == 16
    assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    assert vector == again.data[0].embedding
    assert [d.index for d in batch.data] == [0, 1]
    assert batch.data[0].embedding == vector
    assert batch.data[1].embedding != vector
    assert one.usage.prompt_tokens > 0
    assert [e["mode"] for e in await ps(http, emu)] == ["embedding"]


async def test_sdk_sees_dmr_errors(start_emulator: StartEmulator) -> None:
    emu = await start_emulator()
    async with async_client(emu) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="ai/absent", messages=MESSAGES)
    assert info.value.status_code == 404
    assert "model not found" in info.value.response.text


async def test_preload_only_loads_and_answers_empty(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    headers = {"X-Preload-Only": "true"}
    async with http.post(f"{emu.url}/engines/v1/chat/completions", json=chat_body(), headers=headers) as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    entries = await ps(http, emu)
    assert [(e["model_name"], e.get("loading")) for e in entries] == [("ai/smollm2", None)]
    state = await admin_get(http, emu, "state")
    assert state["counters"]["loads_completed"] == 1
    assert state["loaded"] == ["ai/smollm2:latest"]
