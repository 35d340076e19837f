"""Validation of an Anthropic Messages body before it is routed: one clear 400 naming the field, in both modes.

The messages follow Anthropic's own wording (`max_tokens: Field required`, `messages.0.role: Input should be
'user' or 'assistant'`), so a client sees the same error from Pier as from the API it was written against.
Only what Pier relies on (to route, or to translate) is checked; the endpoint checks the rest.
"""

from __future__ import annotations

from typing import Any

from services.router.errors import InvalidRequest

ROLES = ("user", "assistant")
# Block types each role may send (Anthropic's request content blocks that translation knows).
USER_BLOCKS = frozenset({"text", "image", "tool_result", "document"})
ASSISTANT_BLOCKS = frozenset({"text", "tool_use", "thinking", "redacted_thinking"})
TOOL_CHOICES = frozenset({"auto", "any", "none", "tool"})
IMAGE_SOURCES = frozenset({"base64", "url"})
_RESULT_BLOCKS = frozenset({"text", "image"})
_SYSTEM_BLOCKS = frozenset({"text"})


def _fail(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {message}", param=field)


def _one_of(value: Any, choices: frozenset[str]) -> bool:
    # A string first: `{} in frozenset(...)` raises TypeError (unhashable), which would be a 500.
    return isinstance(value, str) and value in choices


def _number(data: dict[str, Any], key: str) -> None:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise _fail(key, "Input should be a valid number")


def _integer(data: dict[str, Any], key: str, *, minimum: int) -> None:
    value = data.get(key)
    if value is None:
        return
    # A float with no fractional part (`1.0`) is an integer, as in JSON Schema and Anthropic's own validation.
    if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
        raise _fail(key, "Input should be a valid integer")
    if value < minimum:
        raise _fail(key, f"Input should be greater than or equal to {minimum}")


def _text_blocks(value: Any, field: str, allowed: frozenset[str]) -> None:
    """`system`, or a tool result's content: a string or a list of blocks."""
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _fail(field, "Input should be a valid string or a list of content blocks")
    for i, block in enumerate(value):
        _block(block, f"{field}.{i}", allowed)


def _block(block: Any, field: str, allowed: frozenset[str]) -> None:
    if not isinstance(block, dict):
        raise _fail(field, "Input should be a valid object")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _fail(f"{field}.type", "Field required")
    if kind not in allowed:
        raise _fail(f"{field}.type", f"Input should be one of {', '.join(sorted(allowed))} (got {kind!r})")
    if kind == "text" and not isinstance(block.get("text"), str):
        raise _fail(f"{field}.text", "Input should be a valid string")
    if kind == "image":
        source = block.get("source")
        if not isinstance(source, dict) or not _one_of(source.get("type"), IMAGE_SOURCES):
            raise _fail(f"{field}.source.type", "Input should be 'base64' or 'url'")
        need = ("media_type", "data") if source["type"] == "base64" else ("url",)
        for key in need:
            if not isinstance(source.get(key), str):
                raise _fail(f"{field}.source.{key}", "Input should be a valid string")
    elif kind == "tool_use":
        for key in ("id", "name"):
            if not isinstance(block.get(key), str):
                raise _fail(f"{field}.{key}", "Input should be a valid string")
        if not isinstance(block.get("input"), dict):
            raise _fail(f"{field}.input", "Input should be a valid object")
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            raise _fail(f"{field}.tool_use_id", "Input should be a valid string")
        if block.get("content") is not None:
            _text_blocks(block["content"], f"{field}.content", _RESULT_BLOCKS)
        if not isinstance(block.get("is_error", False), bool):
            raise _fail(f"{field}.is_error", "Input should be a valid boolean")
    elif kind == "thinking" and not isinstance(block.get("thinking"), str):
        raise _fail(f"{field}.thinking", "Input should be a valid string")


def _messages(value: Any) -> None:
    if value is None:
        raise _fail("messages", "Field required")
    if not isinstance(value, list):
        raise _fail("messages", "Input should be a valid list")
    for i, message in enumerate(value):
        field = f"messages.{i}"
        if not isinstance(message, dict):
            raise _fail(field, "Input should be a valid object")
        role = message.get("role")
        if role not in ROLES:
            raise _fail(f"{field}.role", f"Input should be 'user' or 'assistant' (got {role!r})")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise _fail(f"{field}.content", "Input should be a valid string or a list of content blocks")
        allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
        for j, block in enumerate(content):
            _block(block, f"{field}.content.{j}", allowed)


def _tools(data: dict[str, Any]) -> None:
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise _fail(f"tools.{i}.name", "Field required")
            if tool.get("type", "custom") != "custom":
                raise _fail(f"tools.{i}.type", f"server tool {tool.get('type')!r} is not available on this endpoint")
            if not isinstance(tool.get("input_schema"), dict):
                raise _fail(f"tools.{i}.input_schema", "Input should be a valid object")
    choice = data.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or not _one_of(choice.get("type"), TOOL_CHOICES):
            raise _fail("tool_choice.type", "Input should be 'auto', 'any', 'none' or 'tool'")
        if choice["type"] == "tool" and not isinstance(choice.get("name"), str):
            raise _fail("tool_choice.name", "Field required")


def check_messages(data: dict[str, Any], *, count_tokens: bool = False) -> None:
    """Raise `InvalidRequest` naming the first bad field of a Messages (or count_tokens) body."""
    if not isinstance(data.get("model"), str) or not data["model"]:
        raise _fail("model", "Field required")
    if not count_tokens:
        if data.get("max_tokens") is None:
            raise _fail("max_tokens", "Field required")
        _integer(data, "max_tokens", minimum=1)
        stream = data.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _fail("stream", "Input should be a valid boolean")
    _messages(data.get("messages"))
    if data.get("system") is not None:
        _text_blocks(data["system"], "system", _SYSTEM_BLOCKS)
    stops = data.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _fail("stop_sequences", "Input should be a valid list of strings")
    for key in ("temperature", "top_p"):
        _number(data, key)
    _integer(data, "top_k", minimum=0)
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise _fail("metadata", "Input should be a valid object")
    _tools(data)
