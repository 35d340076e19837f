"""The inference routes' shared path: engine, body, model checks, lazy load, and the OpenAI handlers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulator import chat as chat_reply
from tests.emulator import content, promptcache
from tests.emulator.catalog import PulledModel
from tests.emulator.config import VALID_ENGINES
from tests.emulator.errors import DmrError, StillLoading, model_not_found
from tests.emulator.keys import EMULATOR, RECORD
from tests.emulator.runners import LoadAborted, LoadFailed, Runner
from tests.emulator.state import Emulator
from tests.emulator.streaming import ClientGone, Dropped, EventStream

MAX_BODY_BYTES = 10 * 1024 * 1024
FINGERPRINT = "b6500-emulator"
_FORMAT_ENGINE = {"gguf": "llama.cpp", "safetensors": "vllm", "dduf": "diffusers"}


@dataclass
class Inference:
    """A validated inference request, ready to be served by a loaded runner."""

    emulator: Emulator
    body: dict[str, Any]
    model: PulledModel
    requested: str
    backend: str

    @property
    def config_name(self) -> str:
        return self.emulator.config.name


async def parse(request: web.Request) -> Inference:
    """Check what DMR checks, in DMR's order; raises DmrError with DMR's status and text."""
    em = request.app[EMULATOR]
    engine = request.match_info.get("engine")
    if engine is not None and engine not in VALID_ENGINES:
        raise DmrError(404, "backend not found")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise DmrError(400, "request too large")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # Go's decoder refuses nesting past its max depth: a 400, like bad JSON
        raise DmrError(400, "invalid request") from None
    if not isinstance(body, dict):
        raise DmrError(400, "invalid request")
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise DmrError(400, "model is required")
    model = em.catalog.get(requested)
    if model is None:
        raise model_not_found(requested)
    backend = engine or _FORMAT_ENGINE.get(model.info.format, "llama.cpp")
    if backend not in em.config.engines:
        hint = f"run: docker model install-runner --backend {backend}"
        raise DmrError(412, f'backend "{backend}" is not installed; {hint}')
    em.counters["inference_requests"] += 1
    return Inference(em, body, model, requested, backend)


@asynccontextmanager
async def runner_for(
    request: web.Request, inf: Inference, mode: str, *, generates: bool = True
) -> AsyncIterator[Runner]:
    """Acquire (lazily loading) the runner, wait for one of its generation slots, apply the first-byte delay,
    and release both afterwards (also when the client goes away). `generates=False`: the request needs the
    loaded runner but no slot (llama.cpp answers token counting on its HTTP thread)."""
    record = request.get(RECORD)
    saw_loading = False
    key = (inf.backend, inf.model.tag, mode)
    if inf.emulator.config.loading_503 and not inf.emulator.runners.loaded(key):
        if key not in inf.emulator.runners.runners:
            inf.emulator.start_background(inf.emulator.runners.preload(key, inf.requested))
        raise StillLoading()

    def on_loading() -> None:
        nonlocal saw_loading
        saw_loading = True

    try:
        runner = await inf.emulator.runners.acquire(key, inf.requested, on_loading)
    except asyncio.CancelledError:
        if record is not None and saw_loading:
            record.disconnected_during_load = True
        raise
    except (LoadAborted, LoadFailed) as exc:
        raise DmrError(500, f"unable to load runner: {exc}") from None
    try:
        runner.requests += 1
        if preload_only(request):
            # DMR answers a preload itself once the runner is ready: llama.cpp never sees it.
            yield runner
        elif not generates:
            await _first_byte_delay(inf)
            yield runner
        else:
            # llama.cpp answers (headers included) only once a slot starts processing the request.
            async with runner.slots.held():
                await _first_byte_delay(inf)
                yield runner
    finally:
        await inf.emulator.runners.release(runner)


async def _first_byte_delay(inf: Inference) -> None:
    delay_s = inf.emulator.config.first_byte_delay_ms / 1000.0
    if delay_s > 0:
        await asyncio.sleep(delay_s)


def int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def preload_only(request: web.Request) -> bool:
    return request.headers.get("X-Preload-Only") == "true"


async def chat_or_completion(request: web.Request) -> web.StreamResponse:
    """POST .../v1/chat/completions and .../v1/completions."""
    inf = await parse(request)
    chat = request.path.endswith("/chat/completions")
    async with runner_for(request, inf, "completion") as runner:
        if preload_only(request):
            return web.Response(status=200)
        prompt = inf.body.get("messages") if chat else inf.body.get("prompt")
        prompt_tokens = content.count_tokens(prompt)
        max_tokens = inf.body.get("max_tokens", inf.body.get("max_completion_tokens"))
        if chat:
            reply = chat_reply.plan(
                inf.body,
                inf.config_name,
                inf.requested,
                inf.emulator.config.chunks,
                int_or_none(max_tokens),
                inf.emulator.config.reasoning,
            )
        else:
            pieces, finish = content.reply_pieces(
                inf.config_name, inf.requested, inf.emulator.config.chunks, int_or_none(max_tokens)
            )
            reply = chat_reply.ChatReply(pieces, finish, [])
        pieces, finish = reply.pieces, reply.finish
        runner.prompt_tokens += prompt_tokens
        runner.predicted_tokens += len(pieces)
        # The slot's prompt cache: only the tokens past the cached prefix are processed (prefill time).
        tokens = promptcache.prompt_tokens(prompt)
        slot, cached = runner.prompt_cache.take(tokens)
        try:
            return await _answer(request, inf, chat, reply, prompt_tokens, len(tokens) - cached, cached)
        finally:
            runner.prompt_cache.put(slot, tokens + promptcache.reply_tokens("".join(pieces)))


async def _answer(
    request: web.Request,
    inf: Inference,
    chat: bool,
    reply: chat_reply.ChatReply,
    prompt_tokens: int,
    uncached: int,
    cached: int,
) -> web.StreamResponse:
    """Prefill what the cache lacked, then answer (streamed or whole)."""
    prefill_s = uncached * inf.emulator.config.prefill_ms_per_token / 1000.0
    if prefill_s > 0:
        await asyncio.sleep(prefill_s)
    record = request.get(RECORD)
    if record is not None:
        record.cached_tokens = cached
    pieces, finish = reply.pieces, reply.finish
    base = {
        "id": content.new_id("chatcmpl-" if chat else "cmpl-"),
        "created": int(time.time()),
        "model": inf.requested,
        "system_fingerprint": FINGERPRINT,
    }
    if inf.body.get("stream") is True:
        opts = inf.body.get("stream_options")
        include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        return await _stream(request, inf, base, chat, reply, prompt_tokens, include_usage, (uncached, cached))
    text = "".join(pieces)
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": text if reply.tool_call is None else None}
        if reply.reasoning:
            message["reasoning_content"] = "".join(reply.reasoning)
        if reply.tool_call is not None:
            message["tool_calls"] = [_tool_call(reply.tool_call)]
        choice: dict[str, Any] = {"finish_reason": finish, "index": 0, "message": message}
        if reply.matched_stop is not None:
            choice["stop_reason"] = reply.matched_stop
    else:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    return content.json_response(
        {
            "choices": [choice],
            **base,
            "object": "chat.completion" if chat else "text_completion",
            "usage": content.usage(prompt_tokens, len(pieces)),
            "timings": content.timings(uncached, len(pieces), cached),
        }
    )


def _tool_call(call: dict[str, str]) -> dict[str, Any]:
    return {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}


async def _stream(
    request: web.Request,
    inf: Inference,
    base: dict[str, Any],
    chat: bool,
    reply: chat_reply.ChatReply,
    prompt_tokens: int,
    include_usage: bool,
    prefill: tuple[int, int],  # (tokens processed, tokens reused from the slot's cache)
) -> web.StreamResponse:
    pieces, finish = reply.pieces, reply.finish
    obj = "chat.completion.chunk" if chat else "text_completion"
    stream = EventStream(request, inf.emulator.config.chunk_interval_ms / 1000.0)

    def chunk(delta: dict[str, Any] | str | None, finish_reason: str | None) -> dict[str, Any]:
        if chat:
            choice: dict[str, Any] = {"finish_reason": finish_reason, "index": 0, "delta": delta or {}}
        else:
            choice = {"text": delta or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return {"choices": [choice], **base, "object": obj}

    try:
        await stream.start()
        if chat:
            await stream.send_json(chunk({"role": "assistant", "content": None}, None))
        for thought in reply.reasoning:
            await stream.send_json(chunk({"reasoning_content": thought}, None))
        for piece in pieces:
            await stream.send_json(chunk({"content": piece} if chat else piece, None))
        if reply.tool_call is not None:
            # llama.cpp's order: the call's id and name first, then its arguments in fragments.
            call = reply.tool_call
            head = _tool_call(call) | {"index": 0}
            head["function"] = {"name": call["name"], "arguments": ""}
            await stream.send_json(chunk({"tool_calls": [head]}, None))
            half = len(call["arguments"]) // 2
            for part in (call["arguments"][:half], call["arguments"][half:]):
                await stream.send_json(chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}, None))
        timings = content.timings(prefill[0], len(pieces), prefill[1])
        last = chunk({} if chat else "", finish) | {"timings": timings}
        if reply.matched_stop is not None:
            last["choices"][0]["stop_reason"] = reply.matched_stop
        await stream.send_json(last)
        if include_usage:
            usage = content.usage(prompt_tokens, len(pieces))
            await stream.send_json({"choices": [], **base, "object": obj, "usage": usage})
        await stream.send("[DONE]")
        response = await stream.finish()
    except Dropped:
        inf.emulator.counters["streams_aborted"] += 1
        return stream.response
    except ClientGone:
        mark_disconnected(request, inf.emulator)
        return stream.response
    inf.emulator.counters["streams_completed"] += 1
    return response


def mark_disconnected(request: web.Request, em: Emulator) -> None:
    record = request.get(RECORD)
    if record is not None and not record.disconnected:
        record.disconnected = True
        em.counters["disconnects"] += 1
    em.counters["streams_aborted"] += 1


async def embeddings(request: web.Request) -> web.StreamResponse:
    """POST .../v1/embeddings: one deterministic unit vector per input."""
    inf = await parse(request)
    raw_input = inf.body.get("input")
    if raw_input is None:
        raise DmrError(400, "input is required")
    # A list of strings is a batch; a single string or one token array is a single input.
    batch = isinstance(raw_input, list) and raw_input and not isinstance(raw_input[0], int)
    inputs = raw_input if batch else [raw_input]
    async with runner_for(request, inf, "embedding") as runner:
        if preload_only(request):
            return web.Response(status=200)
        tokens = content.count_tokens(inputs)
        runner.prompt_tokens += tokens
        data = [
            {"embedding": content.embedding(json.dumps(item)), "index": i, "object": "embedding"}
            for i, item in enumerate(inputs)
        ]
        return content.json_response(
            {
                "model": inf.requested,
                "object": "list",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                "data": data,
            }
        )
