"""What a chat completion answers beyond plain text: tool calls, stop strings and reasoning (deterministic).

- `tools` (and `tool_choice` not "none"): when the last message is not a tool result, the reply is one call to
  the tool `tool_choice` names (else the first), with arguments made from its JSON schema; finish `tool_calls`.
- After a `tool` message, the reply quotes the result: `Tool result: <text>.`.
- `stop`: the reply is cut before the first stop string it contains; the choice names it in `stop_reason`
  (as vLLM does), finish `stop`.
- `--reasoning`: `reasoning_content` pieces come before the content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.emulator import content

REASONING = ["Thinking about ", "the request."]
_SAMPLE = {"string": "emulated", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


@dataclass
class ChatReply:
    pieces: list[str]
    finish: str
    reasoning: list[str]
    tool_call: dict[str, str] | None = None  # {"id", "name", "arguments"}
    matched_stop: str | None = None


def _arguments(tool: dict[str, Any]) -> str:
    schema = tool.get("function", {}).get("parameters") or {}
    props = schema.get("properties") if isinstance(schema, dict) else None
    values = {k: _SAMPLE.get(str(v.get("type"))) for k, v in (props or {}).items() if isinstance(v, dict)}
    return json.dumps(values, separators=(",", ":"))


def _chosen_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        wanted = choice.get("function", {}).get("name")
        for tool in tools:
            if isinstance(tool, dict) and tool.get("function", {}).get("name") == wanted:
                return tool
    first = tools[0]
    return first if isinstance(first, dict) else None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(p.get("text", "") for p in value if isinstance(p, dict))
    return ""


def _cut_at_stop(pieces: list[str], stop: Any) -> tuple[list[str], str | None]:
    stops = [stop] if isinstance(stop, str) else [s for s in stop or () if isinstance(s, str) and s]
    text = "".join(pieces)
    found = [(text.find(s), s) for s in stops if s and s in text]
    if not found:
        return pieces, None
    at, matched = min(found)
    out: list[str] = []
    used = 0
    for piece in pieces:
        if used + len(piece) >= at:
            if at > used:
                out.append(piece[: at - used])
            break
        out.append(piece)
        used += len(piece)
    return out, matched


def plan(
    body: dict[str, Any], name: str, model: str, chunks: int, max_tokens: int | None, reasoning: bool
) -> ChatReply:
    """The reply to a chat completion body (same whether streamed or not)."""
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages and isinstance(messages[-1], dict) else {}
    thoughts = list(REASONING) if reasoning else []
    tool = _chosen_tool(body)
    if tool is not None and last.get("role") != "tool":
        call = {
            "id": content.new_id("call_"),
            "name": str(tool.get("function", {}).get("name", "")),
            "arguments": _arguments(tool),
        }
        return ChatReply([], "tool_calls", thoughts, tool_call=call)
    if last.get("role") == "tool":
        pieces, finish = [f"Tool result: {_text(last.get('content'))}."], "stop"
    else:
        pieces, finish = content.reply_pieces(name, model, chunks, max_tokens)
    pieces, matched = _cut_at_stop(pieces, body.get("stop"))
    if matched is not None:
        finish = "stop"
    return ChatReply(pieces, finish, thoughts, matched_stop=matched)
