"""The emulator's stand-ins for what translation needs from an OpenAI-compatible server: no Anthropic route
(`anthropic=False`), llama-server's /tokenize, tool calls, stop strings and reasoning_content."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.emulator_tests.conftest import StartEmulator
from tests.emulator_tests.helpers import sse_events

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
]


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "ai/smollm2", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_without_anthropic_routes_they_are_404(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(anthropic=False)
    body = {"model": "ai/smollm2", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        for path in ("/anthropic/v1/messages", "/anthropic/v1/messages/count_tokens", "/v1/messages"):
            async with http.post(emu.url + path, json=body) as resp:
                assert resp.status == 404, path
                assert (await resp.text()).strip() == "not found"
        async with http.post(emu.url + "/v1/chat/completions", json=chat()) as resp:
            assert resp.status == 200


async def test_tokenize_only_when_switched_on(start_emulator: StartEmulator) -> None:
    off = await start_emulator()
    on = await start_emulator(tokenize=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(off.url + "/tokenize", json={"content": "abcdefgh"}) as resp:
            assert resp.status == 404
        async with http.post(on.url + "/tokenize", json={"content": "abcdefghi"}) as resp:
            assert resp.status == 200
            assert len((await resp.json())["tokens"]) == 3
        async with http.post(on.url + "/tokenize", json={"text": "x"}) as resp:
            assert resp.status == 400


async def test_tool_call_then_tool_result(start_emulator: StartEmulator) -> None:
    emu = await start_emulator()
    async with aiohttp.ClientSession() as http:
        choice = {"type": "function", "function": {"name": "get_time"}}
        async with http.post(emu.url + "/v1/chat/completions", json=chat(tools=TOOLS)) as resp:
            first = (await resp.json())["choices"][0]
        async with http.post(emu.url + "/v1/chat/completions", json=chat(tools=TOOLS, tool_choice=choice)) as resp:
            forced = (await resp.json())["choices"][0]
        messages = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": first["message"]["tool_calls"]},
            {"role": "tool", "tool_call_id": "x", "content": "sunny"},
        ]
        async with http.post(emu.url + "/v1/chat/completions", json=chat(tools=TOOLS, messages=messages)) as resp:
            after = (await resp.json())["choices"][0]
        async with http.post(emu.url + "/v1/chat/completions", json=chat(tools=TOOLS, tool_choice="none")) as resp:
            none = (await resp.json())["choices"][0]
    assert first["finish_reason"] == "tool_calls"
    (call,) = first["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "emulated", "days": 1}
    assert forced["message"]["tool_calls"][0]["function"]["name"] == "get_time"
    assert after["message"]["content"] == "Tool result: sunny."
    assert none["finish_reason"] == "stop"
    assert "tool_calls" not in none["message"]


async def test_streamed_tool_call_in_fragments(start_emulator: StartEmulator) -> None:
    emu = await start_emulator()
    url = emu.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, json=chat(tools=TOOLS, stream=True)) as resp:
        events = await sse_events(resp)
    chunks = [json.loads(data) for _, data in events if data != "[DONE]"]
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert calls[0]["id"].startswith("call_")
    assert calls[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "emulated", "days": 1}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_stop_strings_cut_the_reply_and_are_named(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(name="e")
    async with aiohttp.ClientSession() as http:
        async with http.post(emu.url + "/v1/chat/completions", json=chat(stop=["chunk 3", "chunk 2"])) as resp:
            choice = (await resp.json())["choices"][0]
        async with http.post(emu.url + "/v1/chat/completions", json=chat(stop="chunk 2", stream=True)) as resp:
            chunks = [json.loads(data) for _, data in await sse_events(resp) if data != "[DONE]"]
    assert choice["message"]["content"] == "Hello from e (ai/smollm2). chunk 1. "
    assert choice["stop_reason"] == "chunk 2"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello from e (ai/smollm2). chunk 1. "
    assert chunks[-1]["choices"][0]["stop_reason"] == "chunk 2"


async def test_reasoning_content_first(start_emulator: StartEmulator) -> None:
    emu = await start_emulator(reasoning=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(emu.url + "/v1/chat/completions", json=chat()) as resp:
            message = (await resp.json())["choices"][0]["message"]
        async with http.post(emu.url + "/v1/chat/completions", json=chat(stream=True)) as resp:
            chunks = [json.loads(data) for _, data in await sse_events(resp) if data != "[DONE]"]
    assert message["reasoning_content"] == "Thinking about the request."
    deltas = [c["choices"][0]["delta"] for c in chunks]
    order = [k for d in deltas for k in ("reasoning_content", "content") if d.get(k)]
    assert order[:3] == ["reasoning_content", "reasoning_content", "content"]
