"""The Anthropic Messages routes through the official `anthropic` SDK, and their error shape."""

from __future__ import annotations

import json

import aiohttp
import anthropic
import pytest

from tests.emulator import EmulatorServer
from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import sse_events

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello"}]


def client(emu: EmulatorServer, prefix: str = "/anthropic") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=emu.url + prefix, api_key="unused", max_retries=0, timeout=30)


async def test_messages_non_stream(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(name="north", chunks=2)
    async with client(emu) as c:
        message = await c.messages.create(model="ai/smollm2", max_tokens=64, messages=MESSAGES)
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from north (ai/smollm2). chunk 1."
    assert message.usage.output_tokens == 2
    assert message.usage.input_tokens > 0


async def test_messages_stream_event_order(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=3)
    async with (
        client(emu) as c,
        c.messages.stream(model="ai/smollm2", max_tokens=64, messages=MESSAGES) as stream,
    ):
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    raw_kinds = [k for k in kinds if k not in ("text",)]  # the SDK adds derived `text` events
    assert raw_kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello from dmr (ai/smollm2). chunk 1. chunk 2."
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 3


async def test_stream_events_carry_sse_names(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    body = {"model": "ai/smollm2", "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "x"}]}
    async with http.post(f"{emu.url}/anthropic/v1/messages", json=body) as resp:
        assert resp.content_type == "text/event-stream"
        events = await sse_events(resp)
    for name, data in events:
        assert name == json.loads(data)["type"]


async def test_max_tokens_stop_reason(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(chunks=5)
    async with client(emu) as c:
        message = await c.messages.create(model="ai/smollm2", max_tokens=2, messages=MESSAGES)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2


async def test_count_tokens(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with client(emu) as c:
        short = await c.messages.count_tokens(model="ai/smollm2", messages=MESSAGES)
        long = await c.messages.count_tokens(
            model="ai/smollm2", messages=[{"role": "user", "content": "word " * 200}], system="Be brief."
        )
    assert 0 < short.input_tokens < long.input_tokens
    async with http.get(f"{emu.admin_url}/_emulator/state") as resp:
        assert (await resp.json())["loaded"] == ["ai/smollm2:latest"]  # it went through the scheduler


async def test_errors_are_anthropic_shaped(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with client(emu) as c:
        with pytest.raises(anthropic.NotFoundError) as info:
            await c.messages.create(model="ai/absent", max_tokens=8, messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Model not found: ai/absent"},
    }
    async with http.post(f"{emu.url}/anthropic/v1/messages", json={"messages": []}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


async def test_llama_cpp_native_route(http: aiohttp.ClientSession, emu: EmulatorServer) -> None:
    async with client(emu, "/engines") as c:
        message = await c.messages.create(model="ai/smollm2", max_tokens=64, messages=MESSAGES)
    assert message.content[0].type == "text"
    assert message.content[0].text.startswith("Hello from dmr")
    # DMR's own errors on this route stay text/plain
    body = {"model": "ai/absent", "max_tokens": 8, "messages": []}
    async with http.post(f"{emu.url}/engines/v1/messages", json=body) as resp:
        assert resp.status == 404
        assert resp.content_type == "text/plain"
