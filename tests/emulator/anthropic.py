"""Anthropic Messages routes: `/anthropic/v1/messages` (+ count_tokens) and llama.cpp's `/engines/v1/messages`.

Streams llama.cpp's native event sequence: message_start, content_block_start, content_block_delta…,
content_block_stop, message_delta (stop_reason, usage), message_stop.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.emulator import chat, content
from tests.emulator.errors import DmrError
from tests.emulator.inference import Inference, int_or_none, mark_disconnected, parse, preload_only, runner_for
from tests.emulator.keys import EMULATOR
from tests.emulator.streaming import ClientGone, Dropped, EventStream


async def _parse(request: web.Request) -> Inference:
    try:
        return await parse(request)
    except DmrError as exc:
        if exc.message == "model is required":
            exc.anthropic_message = "model: field required"
        raise


def _prompt_tokens(body: dict[str, Any]) -> int:
    system = content.count_tokens(body["system"]) if body.get("system") else 0
    return content.count_tokens(body.get("messages")) + system


def _require_route(request: web.Request) -> None:
    """`--no-anthropic`: the routes do not exist (Go's mux, or llama-server's, answers 404)."""
    if not request.app[EMULATOR].config.anthropic:
        raise web.HTTPNotFound()


async def tokenize(request: web.Request) -> web.StreamResponse:
    """llama-server's `POST /tokenize` (only with `--tokenize`): the loaded model's tokens of `content`."""
    if not request.app[EMULATOR].config.tokenize:
        raise web.HTTPNotFound()
    try:
        body = await request.json()
    except ValueError:
        raise DmrError(400, "invalid request") from None
    text = body.get("content") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise DmrError(400, '"content" must be provided')
    return content.json_response({"tokens": list(range(content.count_tokens(text)))})


def _as_chat(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Messages body the chat planner reads, in its shape (llama.cpp maps them the same way)."""
    out: dict[str, Any] = {"messages": []}
    messages: list[Any] = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    found = last.get("content")
    blocks: list[Any] = found if isinstance(found, list) else []
    results = [b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"]
    if results:
        out["messages"].append({"role": "tool", "content": results[-1].get("content")})
    tools = body.get("tools")
    if isinstance(tools, list):
        out["tools"] = [
            {"function": {"name": t.get("name"), "parameters": t.get("input_schema")}}
            for t in tools
            if isinstance(t, dict)
        ]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}} if kind == "tool" else kind
    if body.get("stop_sequences"):
        out["stop"] = body["stop_sequences"]
    return out


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """DMR routes count_tokens through the scheduler like any inference, so it loads the model too."""
    _require_route(request)
    inf = await _parse(request)
    async with runner_for(request, inf, "completion", generates=False):
        return content.json_response({"input_tokens": _prompt_tokens(inf.body)})


async def messages(request: web.Request) -> web.StreamResponse:
    _require_route(request)
    inf = await _parse(request)
    if not isinstance(inf.body.get("messages"), list):
        raise DmrError(400, "messages is required", anthropic="messages: field required")
    async with runner_for(request, inf, "completion") as runner:
        if preload_only(request):
            return web.Response(status=200)
        input_tokens = _prompt_tokens(inf.body)
        max_tokens = inf.body.get("max_tokens")
        reply = chat.plan(
            _as_chat(inf.body),
            inf.config_name,
            inf.requested,
            inf.emulator.config.chunks,
            int_or_none(max_tokens),
            False,
        )
        pieces, call = reply.pieces, reply.tool_call
        stop_reason = {"length": "max_tokens", "tool_calls": "tool_use"}.get(reply.finish, "end_turn")
        if reply.matched_stop is not None:
            stop_reason = "stop_sequence"
        if call is None:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": "".join(pieces)}]
        else:
            tool_input = json.loads(call["arguments"])
            blocks = [{"type": "tool_use", "id": "toolu_" + call["id"], "name": call["name"], "input": tool_input}]
        runner.prompt_tokens += input_tokens
        runner.predicted_tokens += len(pieces)
        message: dict[str, Any] = {
            "id": content.new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": inf.requested,
        }
        if inf.body.get("stream") is not True:
            return content.json_response(
                message
                | {
                    "content": blocks,
                    "stop_reason": stop_reason,
                    "stop_sequence": reply.matched_stop,
                    "usage": {"input_tokens": input_tokens, "output_tokens": len(pieces)},
                }
            )
        stream = EventStream(request, inf.emulator.config.chunk_interval_ms / 1000.0)
        start = message | {
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        }
        try:
            await stream.start()
            await stream.send_json({"type": "message_start", "message": start}, event="message_start")
            empty: dict[str, Any] = {"text": ""} if call is None else {"input": {}}
            opening = blocks[0] | empty
            block = {"type": "content_block_start", "index": 0, "content_block": opening}
            await stream.send_json(block, event="content_block_start")
            parts = [{"type": "text_delta", "text": p} for p in pieces]
            if call is not None:
                parts = [{"type": "input_json_delta", "partial_json": call["arguments"]}]
            for part in parts:
                delta = {"type": "content_block_delta", "index": 0, "delta": part}
                await stream.send_json(delta, event="content_block_delta")
            await stream.send_json({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            done = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": reply.matched_stop},
                "usage": {"output_tokens": len(pieces)},
            }
            await stream.send_json(done, event="message_delta")
            await stream.send_json({"type": "message_stop"}, event="message_stop")
            response = await stream.finish()
        except Dropped:
            inf.emulator.counters["streams_aborted"] += 1
            return stream.response
        except ClientGone:
            mark_disconnected(request, inf.emulator)
            return stream.response
        inf.emulator.counters["streams_completed"] += 1
        return response
