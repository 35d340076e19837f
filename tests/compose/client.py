"""What the compose tier sends Pier through its published port: the openai SDK and plain JSON GETs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, cast

import openai

MODEL = "ai/smollm2"


@dataclass(frozen=True)
class Reply:
    """A streamed chat completion as the client saw it."""

    pieces: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def stream_chat(base_url: str, *, model: str = MODEL, timeout_s: float = 60) -> Reply:
    """One streaming chat completion with the official SDK (no SDK retries: failover is Pier's job)."""
    client = openai.OpenAI(base_url=f"{base_url}/engines/v1", api_key="unused", max_retries=0, timeout=timeout_s)
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hello."}], stream=True
        )
        pieces = [
            chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content
        ]
    finally:
        client.close()
    return Reply(tuple(pieces))


def get_json(url: str, timeout_s: float = 10) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return cast(dict[str, Any], json.loads(resp.read()))


def try_get_json(url: str, timeout_s: float = 10) -> dict[str, Any] | None:
    """The JSON body, or None while the router does not answer (for waits)."""
    try:
        return get_json(url, timeout_s)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def endpoints_by_name(base_url: str) -> dict[str, dict[str, Any]]:
    """`/internal/status/endpoints` keyed by endpoint name ({} while the router does not answer)."""
    body = try_get_json(f"{base_url}/internal/status/endpoints")
    if body is None:
        return {}
    return {str(entry["name"]): entry for entry in body.get("endpoints", [])}


def all_healthy(base_url: str, names: tuple[str, ...] = ("dmr-a", "dmr-b")) -> dict[str, dict[str, Any]] | None:
    """The endpoints when every named one is healthy and routable, else None."""
    table = endpoints_by_name(base_url)
    if all(name in table and table[name]["status"] == "healthy" and table[name]["routable"] for name in names):
        return table
    return None
