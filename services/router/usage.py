"""What an answer says about itself (response id and model, finish reasons, token usage), read as it passes.

Pure: no I/O, no telemetry. Used only when tracing is on. For a stream the client did not ask usage for,
the request asks the endpoint for it (`stream_options.include_usage`) and `ResponseWatch` strips that extra
chunk again, so the client sees exactly the stream it asked for.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDict

from shared import jsontext

JSON_LIMIT = 1024 * 1024  # a non-streamed answer bigger than this is relayed without being read for usage
_EVENT_END = re.compile(rb"\r?\n\r?\n")
_USAGE_OPS = frozenset({"chat/completions", "completions"})


def needs_usage(op: str, data: dict[str, Any]) -> bool:
    """A stream whose usage chunk the client did not ask for (so Pier asks, and strips it again)."""
    if op not in _USAGE_OPS or data.get("stream") is not True:
        return False
    options = data.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_usage") is True)


def with_usage(data: dict[str, Any]) -> dict[str, Any]:
    """The request with `stream_options.include_usage` set (the client's other stream options kept)."""
    options = data.get("stream_options")
    kept = options if isinstance(options, dict) else {}
    return {**data, "stream_options": {**kept, "include_usage": True}}


@dataclass(slots=True)
class Answer:
    """What the answer told about itself (GenAI response attributes)."""

    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    first_chunk_at: float | None = None  # clock time of the first body bytes of a stream
    stream: bool = False
    cut: str | None = None  # why the endpoint broke the answer off (then `error.type`)

    def read(self, payload: Any) -> None:
        """Take what one JSON object (an OpenAI or Anthropic answer or stream event) says."""
        if not isinstance(payload, dict):
            return
        message = payload.get("message")
        if payload.get("type") == "message_start" and isinstance(message, dict):
            payload = message  # Anthropic's stream: id, model and input usage come in the first event
        rid, model = payload.get("id"), payload.get("model")
        if isinstance(rid, str) and self.response_id is None:
            self.response_id = rid
        if isinstance(model, str) and self.response_model is None:
            self.response_model = model
        for choice in payload.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                self.finish_reasons.append(reason)
        delta = payload.get("delta")
        stop = payload.get("stop_reason") or (delta.get("stop_reason") if isinstance(delta, dict) else None)
        if isinstance(stop, str):
            self.finish_reasons.append(stop)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self._usage(usage)

    def _usage(self, usage: dict[str, Any]) -> None:
        # Anthropic's (and the Responses API's) names first, then Chat Completions'; a bool is not a count.
        value = usage.get("input_tokens")
        if type(value) is not int:
            value = usage.get("prompt_tokens")
        if type(value) is int:
            self.input_tokens = value
        value = usage.get("output_tokens")
        if type(value) is not int:
            value = usage.get("completion_tokens")
        if type(value) is int:
            self.output_tokens = value


_USAGE_KEY = b'"usage"'
# The C scanner: one JSON value at a position of a str -> (value, end). An instance attribute the stubs omit.
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_SPACE = " \t\n\r"  # JSON's whitespace
_TRAILER = 4096  # a usage object and what follows it (an id, llama.cpp's timings) are far smaller


def _trailing_usage(body: bytearray) -> dict[str, Any] | None:
    """The answer's top-level `usage` object when it is among the last members of the answer's object (OpenAI
    and Anthropic put it last; DMR's llama.cpp puts it before `id` and `timings`), read without parsing the rest
    (the content may be long); None when that cannot be told, and the whole answer is then parsed.

    Inside a JSON string every quote is escaped, so the last unescaped `"usage"` is a key. It is taken as the
    top-level one when the text after its value closes exactly one object more than it opens, with the answer's
    last byte. Counting braces is cheap (parsing the members after it costs three times the whole read) and
    exact for every answer that does not put braces in its last members' strings; an answer written to fool it
    misreports only its own endpoint's token counts, which that endpoint could misreport anyway."""
    at = body.rfind(_USAGE_KEY)
    if at <= 0 or body[at - 1] == 0x5C or len(body) - at > _TRAILER:
        return None
    try:
        text = body[at + len(_USAGE_KEY) :].decode("utf-8").lstrip(_SPACE)
        if text[:1] != ":":
            return None
        text = text[1:].lstrip(_SPACE)
        usage, end = _SCAN(text, 0)
    except (ValueError, StopIteration, RecursionError):  # not JSON there, or nested past the parser's depth
        return None
    rest = text[end:].rstrip(_SPACE)
    if not isinstance(usage, dict):
        return None
    if rest != "}" and (not rest.endswith("}") or rest.count("{") - rest.count("}") != -1):
        return None
    return usage


def _is_usage_only(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("choices") == [] and isinstance(payload.get("usage"), dict)


class ResponseWatch:
    """Reads an answer as the relay passes it on; strips the usage chunk Pier asked for.

    The relay calls `head` before sending the response head, `feed` with every body chunk (it sends what
    `feed` returns) and `end` at the end of the body (it sends what `end` returns).
    """

    def __init__(self, *, strip_usage: bool, clock: Callable[[], float], usage_only: bool = False) -> None:
        self.answer = Answer()
        self._strip_usage = strip_usage
        self._usage_only = usage_only  # a whole JSON answer: only its token usage is wanted (unsampled request)
        self._clock = clock
        self._sse = False
        self._json = False
        self._buffer = bytearray()

    def head(self, status: int, content_type: str, headers: CIMultiDict[str]) -> None:
        self._sse = status < 300 and content_type.startswith("text/event-stream")
        self._json = status < 300 and "json" in content_type
        self.answer.stream = self._sse
        if self._sse and self._strip_usage:
            headers.popall("Content-Length", None)  # the body will be shorter than the endpoint's

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        if self.answer.first_chunk_at is None:
            self.answer.first_chunk_at = self._clock()
        if self._sse:
            return self._events(chunk)
        if self._json and len(self._buffer) + len(chunk) <= JSON_LIMIT:
            self._buffer += chunk
        else:
            self._json = False
            self._buffer.clear()
        return chunk

    def end(self) -> bytes:
        if self._json and self._buffer:
            usage = _trailing_usage(self._buffer) if self._usage_only else None
            if usage is not None:
                self.answer._usage(usage)
            else:
                with contextlib.suppress(ValueError):
                    self.answer.read(jsontext.loads(self._buffer))
            self._buffer.clear()
            return b""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest if self._strip_usage else b""

    def cut(self, reason: str) -> None:
        self.answer.cut = reason

    def _events(self, chunk: bytes) -> bytes:
        """Complete events are read; a partial one waits for the next chunk (held back only when stripping)."""
        self._buffer += chunk
        out = bytearray() if self._strip_usage else None
        start = 0
        for found in _EVENT_END.finditer(self._buffer):
            event = bytes(self._buffer[start : found.end()])
            start = found.end()
            keep = self._event(event)
            if out is not None and keep:
                out += event
        del self._buffer[:start]
        return bytes(out) if out is not None else chunk

    def _event(self, event: bytes) -> bool:
        """Read one event; False when it is the usage chunk to strip."""
        for line in event.splitlines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if not data.startswith(b"{"):
                continue
            try:
                payload = jsontext.loads(data)
            except ValueError:
                continue
            self.answer.read(payload)
            if self._strip_usage and _is_usage_only(payload):
                return False
        return True
