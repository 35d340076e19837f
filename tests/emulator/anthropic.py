"""Anthropic Messages routes: `/anthropic/v1/messages` (+ count_tokens) and llama.cpp's `/engines/v1/messages`.

Streams llama.cpp's native event sequence: message_start, content_block_start, content_block_delta…,
content_block_stop, message_delta (stop_reason, usage), message_stop.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.emulator import content
from tests.emulator.errors import DmrError
from tests.emulator.inference import Inference, int_or_none, mark_disconnected, parse, preload_only, runner_for
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


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """DMR routes count_tokens through the scheduler like any inference, so it loads the model too."""
    inf = await _parse(request)
    async with runner_for(request, inf, "completion", generates=False):
        return content.json_response({"input_tokens": _prompt_tokens(inf.body)})


async def messages(request: web.Request) -> web.StreamResponse:
    inf = await _parse(request)
    if not isinstance(inf.body.get("messages"), list):
        raise DmrError(400, "messages is required", anthropic="messages: field required")
    async with runner_for(request, inf, "completion") as runner:
        if preload_only(request):
            return web.Response(status=200)
        input_tokens = _prompt_tokens(inf.body)
        max_tokens = inf.body.get("max_tokens")
        pieces, finish = content.reply_pieces(
            inf.config_name, inf.requested, inf.emulator.config.chunks, int_or_none(max_tokens)
        )
        stop_reason = "max_tokens" if finish == "length" else "end_turn"
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
                    "content": [{"type": "text", "text": "".join(pieces)}],
                    "stop_reason": stop_reason,
                    "stop_sequence": None,
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
            block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
            await stream.send_json(block, event="content_block_start")
            for piece in pieces:
                delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
                await stream.send_json(delta, event="content_block_delta")
            await stream.send_json({"type": "content_block_stop", "index": 0}, event="content_block_stop")
            done = {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
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
