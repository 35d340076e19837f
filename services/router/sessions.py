"""Which conversation a request belongs to: its session key, from the first source that gives one.

Pure functions of (request headers, parsed body, model). Sources, in the configured order:
- `header`: a session header the client sends: Pier's and Olla's own, and the ones coding agents already send
  on every request (Claude Code's `X-Claude-Code-Session-Id`, OpenCode's `X-Opencode-Session`, Codex CLI's
  `session_id` / `session-id`);
- `prompt_cache_key`: OpenAI's field for exactly this (requests that share a prefix share a key);
- `user`: OpenAI's `user`, Anthropic's `metadata.user_id` (off by default: one user may hold many chats);
- `prefix`: a hash of the conversation's stable start (the system prompt and the first user turn) over
  canonical JSON, so key order and whitespace do not matter; OpenAI and Anthropic shapes alike.

A key is scoped to the model and hashed: the raw value is never kept, logged or sent anywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any


class Source(StrEnum):
    HEADER = "header"
    PROMPT_CACHE_KEY = "prompt_cache_key"
    USER = "user"
    PREFIX = "prefix"


DEFAULT_SOURCES = (Source.HEADER, Source.PROMPT_CACHE_KEY, Source.PREFIX)
HEADERS = (
    "X-Pier-Session-ID",
    "X-Olla-Session-ID",
    "X-Claude-Code-Session-Id",
    "X-Opencode-Session",
    "Session_Id",
    "Session-Id",
)
MAX_VALUE_CHARS = 512  # a longer header or field is not a session id: ignored
_SYSTEM_ROLES = frozenset({"system", "developer"})


def digest(model: str, source: Source, raw: str) -> str:
    """The key as it is used: scoped to the model and to its source, hashed (never the raw value)."""
    return hashlib.blake2b(f"{model}\0{source}\0{raw}".encode(), digest_size=16).hexdigest()


def from_headers(sources: Sequence[Source], headers: Mapping[str, str]) -> str | None:
    """The raw session id from a session header, when `header` is a source."""
    if Source.HEADER not in sources:
        return None
    for name in HEADERS:
        value = headers.get(name)
        if value and len(value) <= MAX_VALUE_CHARS and value.strip():
            return value.strip()
    return None


def needs_body(sources: Sequence[Source]) -> bool:
    return any(source is not Source.HEADER for source in sources)


def session_key(
    sources: Sequence[Source],
    headers: Mapping[str, str],
    data: Mapping[str, Any] | None,
    model: str,
    *,
    anthropic: bool,
) -> str | None:
    """The request's session key (hashed, scoped to `model`), or None: the request is routed as without affinity."""
    for source in sources:
        raw: str | None
        if source is Source.HEADER:
            raw = from_headers(sources, headers)
        elif data is None:
            continue
        elif source is Source.PROMPT_CACHE_KEY:
            raw = _short_str(data.get("prompt_cache_key"))
        elif source is Source.USER:
            metadata = data.get("metadata")
            user = metadata.get("user_id") if anthropic and isinstance(metadata, dict) else data.get("user")
            raw = _short_str(user)
        else:
            raw = conversation_prefix(data, anthropic=anthropic)
        if raw:
            return digest(model, source, raw)
    return None


def conversation_prefix(data: Mapping[str, Any], *, anthropic: bool) -> str | None:
    """Canonical JSON of the system prompt and the first user turn (None without a user turn)."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        return None
    if anthropic:
        first = next((m for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
        if first is None:
            return None
        start: list[Any] = [data.get("system"), _turn(first)]
    else:
        start = []
        for message in messages:
            if not isinstance(message, dict):
                return None
            start.append(_turn(message))
            if message.get("role") == "user":
                break
            role = message.get("role")
            # A string first: an unhashable role (`{}`) looked up in the set would raise (a 500).
            if not isinstance(role, str) or role not in _SYSTEM_ROLES:
                return None  # a conversation that does not start with its system prompt and a user turn
        else:
            return None
    return json.dumps(start, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _turn(message: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": message.get("role"), "content": message.get("content")}


def _short_str(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_VALUE_CHARS else None
