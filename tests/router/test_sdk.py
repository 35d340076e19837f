"""The official `openai` SDK (sync and async, streaming and not, embeddings, models) through the router, on
DMR's base URL, its `/v1` alias and Olla's `/olla/dmr/engines/v1`. One stack for the module (read-only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from openai import AsyncOpenAI, NotFoundError, OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.harness import ProcessFactory, RedisServer
from tests.router.support import MODEL, EmuSpec, Stack, build_stack

BASES = ("/engines/v1", "/v1", "/olla/dmr/engines/v1")


def expected(model: str) -> str:
    """The emulator's reply names the endpoint and echoes the model as the request named it."""
    return f"Hello from e1 ({model}). chunk 1. chunk 2. chunk 3. chunk 4."


@pytest.fixture(scope="module")
def stack(module_procs: ProcessFactory, module_dir: Path, module_redis: RedisServer) -> Stack:
    return build_stack(
        module_procs,
        module_dir,
        module_redis.url,
        [EmuSpec("e1", 100, ("--models", "ai/smollm2,ai/embeddinggemma")), EmuSpec("e2", 50)],
    )


def client(stack: Stack, base: str) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}{base}", api_key="not-forwarded", max_retries=0, timeout=30)


def async_client(stack: Stack, base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{stack.url}{base}", api_key="not-forwarded", max_retries=0, timeout=30)


MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.mark.parametrize("base", BASES)
def test_sync_chat(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(model="smollm2", messages=MESSAGES)
        completion = raw.parse()
    assert completion.choices[0].message.content == expected("smollm2")
    assert raw.headers["X-Pier-Endpoint"] == "e1"
    assert raw.headers["X-Pier-Model"] == MODEL
    assert raw.headers["X-Pier-Attempts"] == "1"
    assert raw.headers["X-Pier-Route"].startswith("priority;tier=100;")
    assert "pier" in raw.headers["Via"]
    assert raw.headers["X-Pier-Request-ID"]


@pytest.mark.parametrize("base", BASES)
def test_sync_chat_stream(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk:
        stream = sdk.chat.completions.create(
            model="ai/smollm2",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected("ai/smollm2")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


@pytest.mark.parametrize("base", BASES)
async def test_async_chat_and_stream(stack: Stack, base: str) -> None:
    async with async_client(stack, base) as sdk:
        completion = await sdk.chat.completions.create(model="ai/smollm2:latest", messages=MESSAGES)
        assert completion.choices[0].message.content == expected("ai/smollm2:latest")
        stream = await sdk.chat.completions.create(model="smollm2", messages=MESSAGES, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces) == expected("smollm2")


@pytest.mark.parametrize("base", BASES)
def test_completions(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk:
        completion = sdk.completions.create(model="smollm2", prompt="Once upon a time")
        streamed = "".join(c.choices[0].text for c in sdk.completions.create(model="smollm2", prompt="x", stream=True))
    assert completion.choices[0].text == expected("smollm2")
    assert streamed == expected("smollm2")


@pytest.mark.parametrize("base", BASES)
async def test_embeddings(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk:
        result = sdk.embeddings.create(model="ai/embeddinggemma", input=["first", "second"])
    assert [item.index for item in result.data] == [0, 1]
    assert len(result.data[0].embedding) > 0
    assert result.data[0].embedding != result.data[1].embedding
    async with async_client(stack, base) as asdk:
        single = await asdk.embeddings.create(model="embeddinggemma", input="first")
    assert single.data[0].embedding == result.data[0].embedding


@pytest.mark.parametrize("base", BASES)
def test_models_list_and_retrieve(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk:
        models = sdk.models.list()
        ids = [m.id for m in models.data]
        # One entry per model whatever the number of endpoints serving it.
        assert ids.count(MODEL) == 1
        assert "ai/embeddinggemma:latest" in ids
        retrieved = sdk.models.retrieve(MODEL)
        assert retrieved.id == MODEL
        with pytest.raises(NotFoundError):
            sdk.models.retrieve("ai/not-a-model")


@pytest.mark.parametrize("base", BASES)
def test_unknown_model_is_a_404_the_sdk_understands(stack: Stack, base: str) -> None:
    with client(stack, base) as sdk, pytest.raises(NotFoundError) as caught:
        sdk.chat.completions.create(model="ai/nope", messages=MESSAGES)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "model_not_found"
    assert MODEL in body["message"]
    assert MODEL in body["available_models"]
