"""Deterministic generated content: reply pieces, token counts, ids, embeddings, llama.cpp timings.

The reply names the emulator (`--name`) and the model, so routing tests can tell endpoints apart, and is the
same whether streamed or not.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import struct
from typing import Any

from aiohttp import web


def text_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """DMR's own errors come from Go's http.Error: text/plain, nosniff, a trailing newline."""
    resp = web.Response(status=status, text=message + "\n", content_type="text/plain", charset="utf-8")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


def reply_pieces(name: str, model: str, chunks: int, max_tokens: int | None = None) -> tuple[list[str], str]:
    """The reply split into `chunks` pieces (one per SSE content chunk), and the finish reason."""
    pieces = [f"Hello from {name} ({model})."] + [f" chunk {i}." for i in range(1, chunks)]
    if max_tokens is not None and 0 < max_tokens < len(pieces):
        return pieces[:max_tokens], "length"
    return pieces, "stop"


def count_tokens(value: Any) -> int:
    """A rough token count (about four characters a token) of any JSON-ish prompt."""
    if isinstance(value, str):
        return max(1, math.ceil(len(value) / 4))
    if isinstance(value, list):
        return sum(count_tokens(v) for v in value) or 1
    if isinstance(value, dict):
        return sum(count_tokens(v) for k, v in value.items() if k in ("content", "text", "input", "prompt")) or 1
    return 1


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def embedding(text: str, dims: int = 16) -> list[float]:
    """A unit vector that depends only on the text."""
    digest = hashlib.sha256(text.encode()).digest() * ((dims * 4) // 32 + 1)
    raw = [struct.unpack_from(">i", digest, i * 4)[0] / 2**31 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def timings(prompt_n: int, predicted_n: int, cache_n: int = 0) -> dict[str, float | int]:
    """llama.cpp's `timings` object, carried by the finish_reason chunk (`cache_n`: prompt tokens reused from
    the slot's cache, `prompt_n`: the ones processed)."""
    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n,
        "prompt_ms": round(prompt_n * 0.5, 3),
        "prompt_per_token_ms": 0.5,
        "prompt_per_second": 2000.0,
        "predicted_n": predicted_n,
        "predicted_ms": round(predicted_n * 10.0, 3),
        "predicted_per_token_ms": 10.0,
        "predicted_per_second": 100.0,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "completion_tokens": completion_tokens,
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _compact(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    """JSON the way Go's encoder writes it: compact, `application/json`."""
    return web.json_response(data, status=status, dumps=_compact)
