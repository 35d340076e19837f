"""OpenAI chat completion answer (whole, or stream chunks) -> Anthropic Messages answer (pure: no I/O).

Rules (each tested in a table):
- `reasoning_content` -> a `thinking` block (first), `content` -> a `text` block, `tool_calls` -> `tool_use`
  blocks (arguments parsed back into `input`);
- `finish_reason`: stop -> end_turn, length -> max_tokens, tool_calls -> tool_use, and `stop` with the matched
  stop string (vLLM's `stop_reason`, llama.cpp's `stopping_word`) among the request's stop sequences ->
  stop_sequence with `stop_sequence` set;
- usage: prompt_tokens -> input_tokens, completion_tokens -> output_tokens, cached prompt tokens ->
  cache_read_input_tokens;
- errors: any endpoint error -> `{"type":"error","error":{"type","message"}}` with the status kept.

Streaming (`StreamTranslator`): each upstream SSE event is turned into Anthropic events as soon as it is
complete: message_start, then per block content_block_start / content_block_delta (text_delta,
thinking_delta, input_json_delta) / content_block_stop, then message_delta (stop_reason, usage) and
message_stop. Nothing waits for later chunks; only an incomplete SSE event (split across reads) is held.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from services.router.anthropic_request import Expect
from services.router.errors import anthropic_error_type
from shared import jsontext

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use"}
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


class BadUpstream(ValueError):
    """The endpoint's answer is not a chat completion Pier can translate."""


def error_payload(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": anthropic_error_type(status), "message": message}}


def error_body(status: int, body: bytes) -> bytes:
    """An endpoint's error answer (OpenAI JSON, llama.cpp JSON, or text) in Anthropic's shape."""
    message = ""
    try:
        data = jsontext.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            message = inner["message"]
        elif isinstance(inner, str):
            message = inner
        elif isinstance(data.get("message"), str):
            message = data["message"]
    if not message:
        message = body.decode("utf-8", errors="replace").strip()[:4000] or f"endpoint answered {status}"
    return _dumps(error_payload(status, message))


def _dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def _stop(finish: Any, matched: Any, expect: Expect) -> tuple[str, str | None]:
    if finish == "stop" and isinstance(matched, str) and matched in expect.stop_sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn") if isinstance(finish, str) else "end_turn", None


def _matched_stop(choice: dict[str, Any]) -> Any:
    # vLLM names the stop string that ended the generation in `stop_reason`; llama.cpp in `stopping_word`.
    matched = choice.get("stop_reason")
    return matched if isinstance(matched, str) else choice.get("stopping_word")


def usage(raw: Any) -> dict[str, int]:
    if not isinstance(raw, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    out = {"input_tokens": _int(raw.get("prompt_tokens")), "output_tokens": _int(raw.get("completion_tokens"))}
    details = raw.get("prompt_tokens_details")
    if isinstance(details, dict) and _int(details.get("cached_tokens")):
        out["cache_read_input_tokens"] = _int(details["cached_tokens"])
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments back as an object (a model may emit broken JSON: keep it, never crash)."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        value = jsontext.loads(arguments)
    except ValueError:
        return {"_raw_arguments": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def message_id(upstream_id: Any) -> str:
    return f"msg_{upstream_id}" if isinstance(upstream_id, str) and upstream_id else f"msg_{secrets.token_hex(12)}"


def to_message(completion: Any, expect: Expect) -> dict[str, Any]:
    """A whole chat completion as an Anthropic message; `BadUpstream` when it is not one."""
    if not isinstance(completion, dict):
        raise BadUpstream("the answer is not a JSON object")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadUpstream("the answer has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadUpstream("the answer's first choice has no message")
    content: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = message.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            raise BadUpstream("a tool call has no function")
        function = call["function"]
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") if isinstance(call.get("id"), str) else f"toolu_{secrets.token_hex(12)}",
                "name": str(function.get("name", "")),
                "input": _input(function.get("arguments")),
            }
        )
    stop_reason, stop_sequence = _stop(choice.get("finish_reason"), _matched_stop(choice), expect)
    return {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": expect.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(completion.get("usage")),
    }


def message_events(message: dict[str, Any]) -> bytes:
    """A whole message as the event sequence a stream would have carried: for a client that asked for a stream
    from an endpoint that answered in one piece (some servers ignore `stream` for some requests)."""
    usage_in = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage_in, "output_tokens": 0}
    out = [event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        if kind == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            delta = _block_delta(index, b"text_delta", b"text", block["text"])
        elif kind == "thinking":
            opening = {"type": "thinking", "thinking": "", "signature": ""}
            delta = _block_delta(index, b"thinking_delta", b"thinking", block["thinking"])
        else:
            opening = {**block, "input": {}}
            delta = _block_delta(index, b"input_json_delta", b"partial_json", json.dumps(block["input"]))
        out.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
        )
        out.append(delta)
        out.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    ending = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    out.append(event("message_delta", {"type": "message_delta", "delta": ending, "usage": dict(usage_in)}))
    out.append(event("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def tokens_to_count(answer: Any) -> dict[str, int]:
    """llama-server's `/tokenize` answer as Anthropic's count_tokens answer."""
    tokens = answer.get("tokens") if isinstance(answer, dict) else None
    if not isinstance(tokens, list):
        raise BadUpstream("the tokenizer's answer has no token list")
    return {"input_tokens": len(tokens)}


def event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


class StreamTranslator:
    """One translated stream: `feed(upstream bytes) -> Anthropic event bytes`, then `close()` at the end.

    A state machine, no I/O: what it returns for a chunk depends only on the chunks fed before.
    """

    def __init__(self, expect: Expect) -> None:
        self._expect = expect
        self._pending = b""
        self._started = False
        self._block = -1  # index of the open block, -1: none open
        self._kind = ""  # "text" | "thinking" | "tool_use"
        self._tools: dict[int, int] = {}  # upstream tool call index -> our block index
        self._next = 0  # next block index
        self._finish: str | None = None
        self._matched: Any = None
        self._usage: dict[str, int] = {"input_tokens": 0, "output_tokens": 0}
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        """Translate every SSE event completed by `chunk`; an incomplete one waits for the next read."""
        data = self._pending + chunk if self._pending else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        *events, self._pending = data.split(b"\n\n")
        out: list[bytes] = []
        for raw in events:
            payload = _data_of(raw)
            if payload is not None and not self.done:
                out.extend(self._on(payload))
        return b"".join(out)

    def close(self) -> bytes:
        """The upstream stream ended: whatever it left to say, or an error event when it ended too early."""
        out = self.feed(b"\n\n") if self._pending.strip() else b""
        if self.done:
            return out
        if self._finish is None:
            self.done = True
            return out + event("error", error_payload(502, "the endpoint ended the stream before it finished"))
        return out + b"".join(self._end())

    def _on(self, payload: bytes) -> list[bytes]:
        if payload == b"[DONE]":
            return self._end() if self._started else []
        try:
            chunk = jsontext.loads(payload)
        except ValueError:
            return [self._fail("the endpoint sent a stream event that is not JSON")]
        if not isinstance(chunk, dict):
            return [self._fail("the endpoint sent a stream event that is not an object")]
        if "error" in chunk:
            self.done = True
            return [event("error", json.loads(error_body(500, payload)))]
        out: list[bytes] = []
        if not self._started:
            self._started = True
            out.append(self._message_start(chunk))
        if chunk.get("usage"):
            self._usage = usage(chunk["usage"])
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            finish = choice.get("finish_reason")
            if isinstance(finish, str) and finish:
                self._finish = finish
                self._matched = _matched_stop(choice)
                self._close_block(out)
        return out

    def _fail(self, message: str) -> bytes:
        self.done = True
        return event("error", error_payload(502, message))

    def _message_start(self, chunk: dict[str, Any]) -> bytes:
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self._expect.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _open(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close_block(out)
        index = self._block = self._next
        self._next += 1
        self._kind = kind
        out.append(
            event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})
        )
        return index

    def _close_block(self, out: list[bytes]) -> None:
        if self._block >= 0:
            out.append(event("content_block_stop", {"type": "content_block_stop", "index": self._block}))
            self._block = -1
            self._kind = ""

    def _delta(self, delta: dict[str, Any], out: list[bytes]) -> None:
        reasoning = delta.get("reasoning_content")
        if isinstance(reasoning, str) and reasoning:
            if self._kind != "thinking":
                self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""}, out)
            out.append(_block_delta(self._block, b"thinking_delta", b"thinking", reasoning))
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._kind != "text":
                self._open("text", {"type": "text", "text": ""}, out)
            out.append(_block_delta(self._block, b"text_delta", b"text", text))
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                self._tool_delta(call, out)

    def _tool_delta(self, call: dict[str, Any], out: list[bytes]) -> None:
        position = call.get("index", 0)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        assert isinstance(function, dict)
        index = self._tools.get(position) if isinstance(position, int) else None
        if index is None or index != self._block:
            # A new call (or a call that resumes after another block, which Anthropic's order cannot express:
            # it continues in a fresh block rather than being lost).
            call_id = call.get("id") if isinstance(call.get("id"), str) else f"toolu_{secrets.token_hex(12)}"
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call_id,
                "name": str(function.get("name") or ""),
                "input": {},
            }
            index = self._open("tool_use", block, out)
            if isinstance(position, int):
                self._tools[position] = index
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            out.append(_block_delta(index, b"input_json_delta", b"partial_json", arguments))

    def _end(self) -> list[bytes]:
        out: list[bytes] = []
        self._close_block(out)
        self.done = True
        stop_reason, stop_sequence = _stop(self._finish, self._matched, self._expect)
        delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}}
        delta["usage"] = dict(self._usage)
        out.append(event("message_delta", delta))
        out.append(event("message_stop", {"type": "message_stop"}))
        return out


def _block_delta(index: int, kind: bytes, key: bytes, value: str) -> bytes:
    """A content_block_delta event, written directly: it is most of a stream's events (same bytes as `event()`)."""
    return (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
        + str(index).encode()
        + b',"delta":{"type":"'
        + kind
        + b'","'
        + key
        + b'":'
        + json.dumps(value, ensure_ascii=False).encode()
        + b"}}\n\n"
    )


def _data_of(raw: bytes) -> bytes | None:
    """The `data:` payload of one SSE event (lines joined), None for comments and events without data."""
    if raw[:6] == b"data: " and b"\n" not in raw:
        return raw[6:].strip()  # the usual event: one data line
    lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(lines).strip()
