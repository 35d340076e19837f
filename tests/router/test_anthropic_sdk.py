"""The official `anthropic` SDK through the router, in both modes, on `/v1/messages` (the SDK's default base
URL), `/anthropic` and Olla's `/olla/anthropic`:
- passthrough: a DMR emulator with the native route (`ai/smollm2`);
- translation: an emulator started as an `openai-compatible` endpoint without the route, with llama-server's
  /tokenize (`ai/gemma3`), and a DMR emulator that answers 404 on the native route (`ai/phi4`, remembered).
One stack for the module; tests only read (the request log is filtered by a marker each test sends).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from anthropic import Anthropic, AsyncAnthropic, NotFoundError
from anthropic.types import Message, MessageParam, ToolParam

from tests.harness import ProcessFactory, RedisServer
from tests.router.support import Emu, EmuSpec, Stack, build_stack

PASS = "ai/smollm2"  # dmr: native route
TRANS = "ai/gemma3"  # oai: openai-compatible, no native route, /tokenize
OLD = "ai/phi4"  # old: a DMR that 404s on the native route, no /tokenize
MODES = {PASS: ("dmr", "passthrough"), TRANS: ("oai", "translation"), OLD: ("old", "translation")}
BASES = ("", "/anthropic", "/olla/anthropic")
TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nnot-really-an-image").decode()


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(
        module_procs,
        module_dir,
        module_redis.url,
        [
            EmuSpec("dmr", 100, ("--models", PASS), model=f"{PASS}:latest"),
            EmuSpec(
                "oai",
                100,
                ("--models", TRANS, "--no-anthropic", "--tokenize"),
                entry={"type": "openai-compatible"},
                model=f"{TRANS}:latest",
            ),
            EmuSpec("old", 100, ("--models", OLD, "--no-anthropic"), model=f"{OLD}:latest"),
        ],
    )


def sdk(stack: Stack, base: str = "") -> Anthropic:
    return Anthropic(base_url=f"{stack.url}{base}", api_key="not-forwarded", max_retries=0, timeout=30)


def async_sdk(stack: Stack, base: str = "") -> AsyncAnthropic:
    return AsyncAnthropic(base_url=f"{stack.url}{base}", api_key="not-forwarded", max_retries=0, timeout=30)


def hello(emu: str, model: str) -> str:
    return f"Hello from {emu} ({model}). chunk 1. chunk 2. chunk 3. chunk 4."


def ask(marker: str) -> list[MessageParam]:
    return [{"role": "user", "content": f"Say hello ({marker})"}]


async def sent(emu: Emu, marker: str) -> list[dict[str, Any]]:
    """The requests the emulator got that carry `marker` (what the router actually sent it)."""
    return [r for r in await emu.requests("/") if marker in json.dumps(r["body"])]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("model", [PASS, TRANS, OLD])
async def test_sync_create(stack: Stack, model: str, base: str) -> None:
    emu, mode = MODES[model]
    marker = uuid.uuid4().hex
    with sdk(stack, base) as client:
        raw = client.messages.with_raw_response.create(
            model=model, max_tokens=64, messages=ask(marker), metadata={"user_id": "u-1"}
        )
        message = raw.parse()
    assert raw.headers["X-Pier-Mode"] == mode
    assert raw.headers["X-Pier-Endpoint"] == emu
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == model
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == hello(emu, model)  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 5
    assert message.usage.input_tokens > 0
    requests = await sent(stack.emu(emu), marker)
    request = requests[-1]
    if mode == "translation":
        assert request["path"].endswith("/v1/chat/completions")
        # Before it: at most one 404 on the native route (the first request to a DMR without it).
        assert [r["path"] for r in requests[:-1]] in ([], ["/anthropic/v1/messages"])
        assert request["body"]["user"] == "u-1"
        assert request["body"]["max_tokens"] == 64
    else:
        assert [r["path"] for r in requests] == ["/anthropic/v1/messages"]


@pytest.mark.parametrize("model", [PASS, TRANS, OLD])
async def test_async_create_and_stream(stack: Stack, model: str) -> None:
    emu, _mode = MODES[model]
    async with async_sdk(stack) as client:
        message = await client.messages.create(model=model, max_tokens=64, messages=ask("async"))
        assert message.content[0].text == hello(emu, model)  # type: ignore[union-attr]
        stream = await client.messages.create(model=model, max_tokens=64, messages=ask("async"), stream=True)
        kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start"
    assert kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 5


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("model", [PASS, TRANS, OLD])
def test_messages_stream_helper(stack: Stack, model: str, base: str) -> None:
    emu, _ = MODES[model]
    with sdk(stack, base) as client, client.messages.stream(model=model, max_tokens=64, messages=ask("s")) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == hello(emu, model)
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 5


@pytest.mark.parametrize("model", [PASS, TRANS, OLD])
@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_round_trip(stack: Stack, model: str, streamed: bool) -> None:
    with sdk(stack) as client:
        messages: list[MessageParam] = [{"role": "user", "content": "Weather in Paris?"}]
        first: Message
        if streamed:
            with client.messages.stream(model=model, max_tokens=64, messages=messages, tools=[TOOL]) as stream:
                first = stream.get_final_message()
        else:
            first = client.messages.create(
                model=model, max_tokens=64, messages=messages, tools=[TOOL], tool_choice={"type": "any"}
            )
        assert first.stop_reason == "tool_use"
        (call,) = first.content
        assert call.type == "tool_use"
        assert call.name == "get_weather"
        assert call.input == {"city": "emulated"}
        messages += [
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
            },
        ]
        second = client.messages.create(model=model, max_tokens=64, messages=messages, tools=[TOOL])
    assert second.stop_reason == "end_turn"
    assert second.content[0].text == "Tool result: sunny, 21 C."  # type: ignore[union-attr]


@pytest.mark.parametrize("model", [PASS, TRANS])
async def test_images_base64_and_url(stack: Stack, model: str) -> None:
    emu, mode = MODES[model]
    marker = uuid.uuid4().hex
    with sdk(stack) as client:
        message = client.messages.create(
            model=model,
            max_tokens=64,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"What is in these? {marker}"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
        )
    assert message.content[0].text == hello(emu, model)  # type: ignore[union-attr]
    request = (await sent(stack.emu(emu), marker))[-1]
    content = request["body"]["messages"][-1]["content"]
    if mode == "translation":
        assert content[1] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
        assert content[2] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    else:
        assert content[1]["source"]["data"] == PNG


@pytest.mark.parametrize("base", BASES)
def test_count_tokens_three_ways(stack: Stack, base: str) -> None:
    text = "Count these words, please: " + "token " * 40
    messages: list[MessageParam] = [{"role": "user", "content": text}]
    with sdk(stack, base) as client:
        native = client.messages.with_raw_response.count_tokens(model=PASS, messages=messages)
        tokenized = client.messages.with_raw_response.count_tokens(model=TRANS, messages=messages)
        estimated = client.messages.with_raw_response.count_tokens(model=OLD, messages=messages)
    assert native.headers["X-Pier-Mode"] == "passthrough"
    assert native.parse().input_tokens > 0
    assert "X-Pier-Token-Count" not in native.headers
    # llama-server's tokenizer (the emulator's: about four characters a token) counts the text itself.
    assert tokenized.headers["X-Pier-Mode"] == "tokenize"
    assert tokenized.parse().input_tokens == -(-len(text) // 4)
    assert "X-Pier-Token-Count" not in tokenized.headers
    assert estimated.headers["X-Pier-Mode"] == "estimate"
    assert estimated.headers["X-Pier-Token-Count"] == "estimated"
    assert estimated.parse().input_tokens == -(-len(text) // 4)


async def test_old_dmr_404_is_remembered(stack: Stack) -> None:
    """After the first 404 on the native route, requests to that endpoint go straight to translation."""
    old = stack.emu("old")
    with sdk(stack) as client:
        for _ in range(3):
            client.messages.create(model=OLD, max_tokens=8, messages=ask("remember"))
    native = [r for r in await old.requests("/anthropic/") if "remember" in json.dumps(r["body"])]
    translated = await sent(old, "remember")
    assert len(native) <= 1  # at most the first request (an earlier test may have taught it already)
    assert len([r for r in translated if r["path"].endswith("/chat/completions")]) == 3


def test_models_in_anthropic_shape(stack: Stack) -> None:
    for base in BASES:  # "": /v1/models, in Anthropic's shape for the Anthropic SDK (its anthropic-version header)
        with sdk(stack, base) as client:
            page = client.models.list()
            ids = [m.id for m in page.data]
            assert f"{PASS}:latest" in ids
            assert f"{TRANS}:latest" in ids
            assert all(m.type == "model" for m in page.data)
            assert page.has_more is False
            model = client.models.retrieve(PASS)
            assert model.id == f"{PASS}:latest"
            assert model.type == "model"
            with pytest.raises(NotFoundError):
                client.models.retrieve("ai/not-a-model")


def test_unknown_model_is_an_anthropic_404(stack: Stack) -> None:
    with sdk(stack) as client, pytest.raises(NotFoundError) as caught:
        client.messages.create(model="ai/nope", max_tokens=8, messages=ask("x"))
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "ai/nope" in body["error"]["message"]
