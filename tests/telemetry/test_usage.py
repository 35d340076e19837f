"""`services.router.usage`: the answer read as it passes, and the usage chunk Pier asked for stripped exactly,
wherever the endpoint's writes split the stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from services.router.usage import ResponseWatch, needs_usage, with_usage


def sse(*payloads: Any) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


CHUNKS = (
    {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
    {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
)
USAGE = {"id": "c1", "model": "m", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}
WITH_USAGE = sse(*CHUNKS, USAGE, b"[DONE]")
WITHOUT_USAGE = sse(*CHUNKS, b"[DONE]")


def relay(watch: ResponseWatch, body: bytes, sizes: list[int]) -> bytes:
    out = bytearray()
    start = 0
    for size in sizes:
        out += watch.feed(body[start : start + size])
        start += size
    out += watch.feed(body[start:])
    out += watch.end()
    return bytes(out)


def streaming_watch(strip: bool) -> tuple[ResponseWatch, CIMultiDict[str]]:
    watch = ResponseWatch(strip_usage=strip, clock=lambda: 1.0)
    headers: CIMultiDict[str] = CIMultiDict({"Content-Length": str(len(WITH_USAGE))})
    watch.head(200, "text/event-stream", headers)
    return watch, headers


@pytest.mark.parametrize("split", range(1, len(WITH_USAGE)))
def test_the_usage_chunk_is_stripped_wherever_the_stream_splits(split: int) -> None:
    watch, headers = streaming_watch(strip=True)
    assert relay(watch, WITH_USAGE, [split]) == WITHOUT_USAGE
    assert "Content-Length" not in headers  # the body got shorter
    answer = watch.answer
    assert (answer.input_tokens, answer.output_tokens) == (7, 2)
    assert answer.finish_reasons == ["stop"]
    assert (answer.response_id, answer.response_model, answer.stream) == ("c1", "m", True)


def test_byte_by_byte() -> None:
    watch, _ = streaming_watch(strip=True)
    assert relay(watch, WITH_USAGE, [1] * (len(WITH_USAGE) - 1)) == WITHOUT_USAGE


def test_without_stripping_the_bytes_pass_unchanged_and_are_read() -> None:
    watch, headers = streaming_watch(strip=False)
    parts = [watch.feed(WITH_USAGE[:10]), watch.feed(WITH_USAGE[10:])]
    assert parts == [WITH_USAGE[:10], WITH_USAGE[10:]]  # each chunk forwarded as it came, nothing held back
    assert watch.end() == b""
    assert "Content-Length" in headers
    assert watch.answer.output_tokens == 2


def test_a_client_chunk_with_usage_and_choices_is_kept() -> None:
    # Some servers put usage on the last content chunk: that chunk is content, never stripped.
    last = {**CHUNKS[1], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
    body = sse(CHUNKS[0], last, b"[DONE]")
    watch, _ = streaming_watch(strip=True)
    assert relay(watch, body, [5]) == body


def test_crlf_events_and_a_cut_tail_are_relayed() -> None:
    body = WITH_USAGE.replace(b"\n", b"\r\n")
    watch, _ = streaming_watch(strip=True)
    assert relay(watch, body, [17]) == WITHOUT_USAGE.replace(b"\n", b"\r\n")
    watch, _ = streaming_watch(strip=True)
    cut = WITHOUT_USAGE[:-3]  # the stream broke off mid-event: what came is still relayed at the end
    assert relay(watch, cut, [9]) == cut


def test_json_answer_is_read_whole() -> None:
    watch = ResponseWatch(strip_usage=False, clock=lambda: 1.0)
    watch.head(200, "application/json", CIMultiDict())
    body = json.dumps({"id": "e1", "model": "m", "data": [], "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    assert relay(watch, body.encode(), [4]) == body.encode()
    assert (watch.answer.response_id, watch.answer.input_tokens, watch.answer.stream) == ("e1", 3, False)


def test_anthropic_stream() -> None:
    body = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"m",'
        b'"usage":{"input_tokens":5,"output_tokens":1}}}\n\n'
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"output_tokens":9}}\n\n'
    )
    watch = ResponseWatch(strip_usage=False, clock=lambda: 1.0)
    watch.head(200, "text/event-stream", CIMultiDict())
    relay(watch, body, [30])
    answer = watch.answer
    assert (answer.response_id, answer.input_tokens, answer.output_tokens) == ("msg_1", 5, 9)
    assert answer.finish_reasons == ["end_turn"]


def test_usage_is_asked_only_for_streams_that_did_not_ask() -> None:
    assert needs_usage("chat/completions", {"stream": True})
    assert needs_usage("completions", {"stream": True, "stream_options": {"include_usage": False}})
    assert not needs_usage("chat/completions", {"stream": True, "stream_options": {"include_usage": True}})
    assert not needs_usage("chat/completions", {"stream": False})
    assert not needs_usage("embeddings", {"stream": True})
    asked = with_usage({"stream": True, "stream_options": {"other": 1}})
    assert asked["stream_options"] == {"other": 1, "include_usage": True}


def usage_only(body: bytes) -> tuple[int | None, int | None, str | None]:
    watch = ResponseWatch(strip_usage=False, clock=lambda: 1.0, usage_only=True)
    watch.head(200, "application/json", CIMultiDict())
    assert relay(watch, body, [5]) == body
    return watch.answer.input_tokens, watch.answer.output_tokens, watch.answer.response_id


def test_unsampled_json_answer_reads_only_its_trailing_usage_and_falls_back_when_unsure() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 7}
    answer = {"id": "c1", "choices": [{"message": {"content": 'he said "usage": {"prompt_tokens": 99}'}}]}
    # The usage object is the last member: read alone (the id is not needed without a span).
    assert usage_only(json.dumps({**answer, "usage": usage}, indent=1).encode()) == (3, 7, None)
    assert usage_only(json.dumps({**answer, "usage": usage}).encode()) == (3, 7, None)
    # Usage first in a short answer: the members after it are not parsed.
    assert usage_only(json.dumps({"usage": usage, **answer}).encode()) == (3, 7, None)
    # Usage further than the tail from the end, or none: the whole answer is parsed.
    long = {"usage": usage, "id": "c3", "choices": [{"message": {"content": "x" * 5000}}]}
    assert usage_only(json.dumps(long).encode()) == (3, 7, "c3")
    tricky = {"id": "c2", "usage": usage, "choices": [{"text": '\\"usage": {"prompt_tokens": 99}}'}]}
    assert usage_only(json.dumps(tricky).encode()) == (3, 7, "c2")  # braces in the strings after it: parsed whole
    assert usage_only(json.dumps(answer).encode()) == (None, None, "c1")
    anthropic = {"id": "msg_1", "content": [{"type": "text", "text": "hi"}], "usage": {"input_tokens": 4}}
    assert usage_only(json.dumps(anthropic).encode()) == (4, None, None)


def test_unsampled_dmr_answer_reads_its_usage_before_id_and_timings_without_parsing_the_rest() -> None:
    # llama.cpp's order (what DMR sends): usage, then id, then timings.
    usage = {"prompt_tokens": 3, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}}
    choices = [{"message": {"content": "hello " * 200}, "finish_reason": "stop"}]
    dmr = {"choices": choices, "object": "chat.completion", "usage": usage, "id": "c5", "timings": {"prompt_n": 3}}
    assert usage_only(json.dumps(dmr).encode()) == (3, 7, None)
    assert usage_only(json.dumps(dmr, indent=2).encode()) == (3, 7, None)
    # A `usage` key inside a later member is not the answer's: the whole answer is parsed.
    nested = {"id": "c6", "usage": usage, "timings": {"usage": {"prompt_tokens": 99, "completion_tokens": 99}}}
    assert usage_only(json.dumps(nested).encode()) == (3, 7, "c6")
    # Braces in the strings after it (the count could be wrong): parsed whole. Bytes after the answer's object:
    # parsed whole, and then unreadable.
    braces = {**dmr, "id": "c{7"}
    assert usage_only(json.dumps(braces).encode()) == (3, 7, "c{7")
    assert usage_only(json.dumps(dmr).encode() + b"}") == (None, None, None)
