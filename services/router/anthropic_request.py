"""Anthropic Messages request -> OpenAI chat completion request (pure: no I/O).

For endpoints without the native `/anthropic/v1/messages` route. The body is validated first
(`anthropic_check`), so the shapes here are known. The mapping rules, each tested in a table:
- `system` (string or text blocks) -> a leading `system` message;
- text -> text; images (base64 or URL) -> OpenAI `image_url` parts (a data URL for base64);
- assistant `tool_use` -> `tool_calls`; user `tool_result` -> a `tool` message, in the order they came, with
  `is_error` kept as an `Error: ` prefix (OpenAI's tool message has no flag); images in a tool result follow
  as a user message (a tool message carries text only);
- assistant `thinking` -> `reasoning_content` (what llama.cpp and vLLM read back); `redacted_thinking` is
  dropped (only Anthropic can read it);
- `tools` -> function tools; `tool_choice` auto/any/none/tool -> auto/required/none/{function};
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`;
- `stop_sequences` -> `stop`; `temperature`, `top_p`, `max_tokens` as they are; `top_k` as an extra field
  (llama.cpp and vLLM honour it); `metadata.user_id` -> `user`; `thinking` -> `chat_template_kwargs.enable_thinking`;
- `stream` -> `stream` with `stream_options.include_usage` (the usage of the final `message_delta`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

CHARS_PER_TOKEN = 4  # the estimate when the endpoint has no tokenizer Pier can reach


class Untranslatable(ValueError):
    """The request asks for something the chat completion API cannot carry (a 400 naming it, not a silent drop)."""


@dataclass(frozen=True, slots=True)
class Expect:
    """What the response translation needs to know about the request."""

    model: str  # as the client named it (the answer names the same)
    stream: bool
    stop_sequences: tuple[str, ...] = ()


def _image_part(source: dict[str, Any]) -> dict[str, Any]:
    base64 = source["type"] == "base64"
    url = f"data:{source['media_type']};base64,{source['data']}" if base64 else source["url"]
    return {"type": "image_url", "image_url": {"url": url}}


def _text_of(content: Any) -> str:
    """The text of a string or a list of blocks (images and other blocks carry no text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(b["text"] for b in content if isinstance(b, dict) and b.get("type") == "text")


def _user_part(block: dict[str, Any]) -> dict[str, Any] | None:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image_part(block["source"])
    if kind == "document":
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "text" and isinstance(source.get("data"), str):
            return {"type": "text", "text": source["data"]}
        kind_of = source.get("type") if isinstance(source, dict) else None
        raise Untranslatable(
            f"a document with a {kind_of!r} source needs an endpoint with the native Anthropic route; "
            "translation carries text documents only"
        )
    return None


def _flush_user(parts: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if all(p["type"] == "text" for p in parts):
        # Plain text as a string: every OpenAI-compatible server reads that, not all read text parts.
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts)})
    else:
        out.append({"role": "user", "content": list(parts)})
    parts.clear()


def _user(content: list[dict[str, Any]], out: list[dict[str, Any]]) -> None:
    parts: list[dict[str, Any]] = []
    for block in content:
        if block["type"] != "tool_result":
            part = _user_part(block)
            if part is not None:
                parts.append(part)
            continue
        _flush_user(parts, out)  # what came before the result stays before it
        result = block.get("content")
        text = _text_of(result)
        if block.get("is_error"):
            text = f"Error: {text}" if text else "Error"
        out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        if isinstance(result, list):
            images = [_image_part(b["source"]) for b in result if isinstance(b, dict) and b.get("type") == "image"]
            if images:
                out.append({"role": "user", "content": images})
    _flush_user(parts, out)


def _assistant(content: list[dict[str, Any]]) -> dict[str, Any]:
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "thinking":
            thinking.append(block["thinking"])
        elif kind == "tool_use":
            arguments = json.dumps(block["input"], separators=(",", ":"))
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if thinking:
        message["reasoning_content"] = "".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    system = data.get("system")
    if system:
        out.append({"role": "system", "content": _text_of(system)})
    for message in data["messages"]:
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
        elif role == "user":
            _user(content, out)
        else:
            out.append(_assistant(content))
    return out


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice["type"]
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"auto": "auto", "any": "required", "none": "none"}[kind]


def to_chat(data: dict[str, Any], model: str) -> dict[str, Any]:
    """The OpenAI chat completion body for a validated Messages body; `model` is the name the endpoint is sent."""
    # Integers may arrive as `8.0` (the check allows it); the endpoint gets them as integers.
    out: dict[str, Any] = {"model": model, "messages": _messages(data), "max_tokens": int(data["max_tokens"])}
    for key in ("temperature", "top_p"):
        if data.get(key) is not None:
            out[key] = data[key]
    if data.get("top_k") is not None:
        out["top_k"] = int(data["top_k"])
    stops = data.get("stop_sequences")
    if stops:
        out["stop"] = list(stops)
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    tools = data.get("tools")
    if tools:
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    **({"description": t["description"]} if isinstance(t.get("description"), str) else {}),
                    "parameters": t["input_schema"],
                },
            }
            for t in tools
        ]
    choice = data.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _tool_choice(choice)
        if choice.get("disable_parallel_tool_use") is True:
            out["parallel_tool_calls"] = False
    thinking = data.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
        out["chat_template_kwargs"] = {"enable_thinking": thinking["type"] == "enabled"}
    if data.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def expect(data: dict[str, Any], client_model: str) -> Expect:
    stops = data.get("stop_sequences") or ()
    return Expect(client_model, data.get("stream") is True, tuple(stops))


def prompt_text(data: dict[str, Any]) -> str:
    """Everything in a Messages body that becomes prompt tokens, as one text (for a tokenizer or the estimate)."""
    parts: list[str] = []
    if data.get("system"):
        parts.append(_text_of(data["system"]))
    for message in data.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
            continue
        for block in content or ():
            kind = block.get("type")
            if kind == "text":
                parts.append(block["text"])
            elif kind == "thinking":
                parts.append(block["thinking"])
            elif kind == "tool_use":
                parts.append(f"{block['name']} {json.dumps(block['input'])}")
            elif kind == "tool_result":
                parts.append(_text_of(block.get("content")))
    for tool in data.get("tools") or ():
        parts.append(json.dumps(tool))
    return "\n".join(parts)


def tokenize_body(data: dict[str, Any]) -> dict[str, Any]:
    """llama-server's `POST /tokenize` body for a count_tokens request."""
    return {"content": prompt_text(data), "add_special": True}


def estimate_tokens(data: dict[str, Any]) -> int:
    """The last resort for count_tokens: about four characters a token (marked as an estimate)."""
    return max(1, math.ceil(len(prompt_text(data)) / CHARS_PER_TOKEN))
