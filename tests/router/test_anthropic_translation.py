"""Table tests of the Anthropic translation (pure functions, no I/O): each mapping rule in both directions,
the streaming event order against recorded expected sequences, and each invalid body case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.router.anthropic_bridge import AnthropicBridge
from services.router.anthropic_check import check_messages
from services.router.anthropic_relay import Leg, Mode, route_missing
from services.router.anthropic_request import Expect, estimate_tokens, expect, prompt_text, to_chat, tokenize_body
from services.router.anthropic_response import (
    BadUpstream,
    StreamTranslator,
    error_body,
    message_events,
    to_message,
    tokens_to_count,
)
from services.router.errors import InvalidRequest
from services.router.table import Target, build_table
from tests.router.core_builders import NOW, config, endpoint, state, states

STREAMS = Path(__file__).parent / "anthropic_streams"
IMG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
IMG_URL = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "smollm2", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], **extra}


def user(*blocks: Any) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
CALL = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}

# (rule, Anthropic request, the OpenAI chat request fields it must produce)
REQUEST_RULES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "system string",
        body(system="Be brief."),
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]},
    ),
    (
        "system blocks",
        body(system=[{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]),
        {"messages": [{"role": "system", "content": "Be\nbrief."}, {"role": "user", "content": "hi"}]},
    ),
    (
        "text blocks become a string",
        body(messages=[user({"type": "text", "text": "a"}, {"type": "text", "text": "b"})]),
        {"messages": [{"role": "user", "content": "a\nb"}]},
    ),
    (
        "images base64 and url",
        body(messages=[user({"type": "text", "text": "see"}, IMG, IMG_URL)]),
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
                    ],
                }
            ]
        },
    ),
    (
        "tool_use -> tool_calls, tool_result -> tool message in order, is_error kept",
        body(
            messages=[
                {"role": "user", "content": "weather?"},
                assistant({"type": "text", "text": "Checking."}, TOOL_USE),
                user(
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "timeout", "is_error": True},
                    {"type": "text", "text": "try again"},
                ),
            ]
        ),
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: timeout"},
                {"role": "user", "content": "try again"},
            ]
        },
    ),
    (
        "text before a tool_result stays before it; result blocks and images",
        body(
            messages=[
                assistant(TOOL_USE),
                user(
                    {"type": "text", "text": "first"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "sunny"}, IMG],
                    },
                ),
            ]
        ),
        {
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "user", "content": "first"},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}],
                },
            ]
        },
    ),
    (
        "thinking -> reasoning_content, redacted_thinking dropped",
        body(
            messages=[
                assistant(
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "redacted_thinking", "data": "xx"},
                    {"type": "text", "text": "ok"},
                ),
            ]
        ),
        {"messages": [{"role": "assistant", "content": "ok", "reasoning_content": "hmm"}]},
    ),
    (
        "tools",
        body(tools=[{"name": "f", "description": "does f", "input_schema": {"type": "object"}}]),
        {
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}},
                }
            ]
        },
    ),
    ("tool_choice auto", body(tool_choice={"type": "auto"}), {"tool_choice": "auto"}),
    ("tool_choice any", body(tool_choice={"type": "any"}), {"tool_choice": "required"}),
    ("tool_choice none", body(tool_choice={"type": "none"}), {"tool_choice": "none"}),
    (
        "tool_choice tool, no parallel calls",
        body(tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
        {"tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": False},
    ),
    ("stop_sequences -> stop", body(stop_sequences=["END", "##"]), {"stop": ["END", "##"]}),
    (
        "sampling: temperature, top_p, top_k (extra field), max_tokens",
        body(temperature=0.2, top_p=0.9, top_k=40, max_tokens=99),
        {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "max_tokens": 99},
    ),
    ("metadata.user_id -> user", body(metadata={"user_id": "u-42"}), {"user": "u-42"}),
    (
        "thinking switch -> chat_template_kwargs",
        body(thinking={"type": "enabled", "budget_tokens": 1024}),
        {"chat_template_kwargs": {"enable_thinking": True}},
    ),
    ("stream asks for usage", body(stream=True), {"stream": True, "stream_options": {"include_usage": True}}),
]


@pytest.mark.parametrize(("rule", "anthropic", "wanted"), REQUEST_RULES, ids=[r[0] for r in REQUEST_RULES])
def test_request_rule(rule: str, anthropic: dict[str, Any], wanted: dict[str, Any]) -> None:
    check_messages(anthropic)  # every table body is valid
    chat = to_chat(anthropic, "ai/smollm2:latest")
    assert chat["model"] == "ai/smollm2:latest"
    for key, value in wanted.items():
        assert chat[key] == value, key


def test_request_sends_nothing_unasked() -> None:
    assert to_chat(body(), "m") == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


def test_integers_written_as_floats_are_integers() -> None:
    # Found by Schemathesis: JSON Schema's integer includes `16.0`, and so does Anthropic's validation.
    data = body(max_tokens=16.0, top_k=4.0)
    check_messages(data)
    chat = to_chat(data, "m")
    assert (chat["max_tokens"], type(chat["max_tokens"])) == (16, int)
    assert (chat["top_k"], type(chat["top_k"])) == (4, int)


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    return {"id": "chatcmpl-9", "object": "chat.completion", "choices": [choice | extra], "usage": usage}


# (rule, OpenAI chat completion, stop sequences asked, the Anthropic message fields it must produce)
RESPONSE_RULES: list[tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any]]] = [
    (
        "text, stop -> end_turn, usage",
        completion({"content": "Hi."}),
        (),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "smollm2",
            "content": [{"type": "text", "text": "Hi."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 7, "output_tokens": 3},
        },
    ),
    ("length -> max_tokens", completion({"content": "Hi"}, "length"), (), {"stop_reason": "max_tokens"}),
    (
        "tool_calls -> tool_use blocks with parsed input",
        completion({"content": None, "tool_calls": [CALL]}, "tool_calls"),
        (),
        {"content": [TOOL_USE], "stop_reason": "tool_use"},
    ),
    (
        "matched stop sequence (vLLM stop_reason)",
        completion({"content": "Hi"}, "stop", stop_reason="END"),
        ("END",),
        {"stop_reason": "stop_sequence", "stop_sequence": "END"},
    ),
    (
        "matched stop sequence (llama.cpp stopping_word)",
        completion({"content": "Hi"}, "stop", stopping_word="##"),
        ("END", "##"),
        {"stop_reason": "stop_sequence", "stop_sequence": "##"},
    ),
    (
        "a stop string the client did not ask for is an end_turn",
        completion({"content": "Hi"}, "stop", stop_reason="<|im_end|>"),
        ("END",),
        {"stop_reason": "end_turn", "stop_sequence": None},
    ),
    (
        "reasoning_content -> thinking block first",
        completion({"content": "Hi", "reasoning_content": "greet"}),
        (),
        {"content": [{"type": "thinking", "thinking": "greet", "signature": ""}, {"type": "text", "text": "Hi"}]},
    ),
    (
        "broken tool arguments are kept, not dropped",
        completion({"tool_calls": [{"id": "t", "function": {"name": "f", "arguments": "{oops"}}]}, "tool_calls"),
        (),
        {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"_raw_arguments": "{oops"}}]},
    ),
]


@pytest.mark.parametrize(("rule", "chat", "stops", "wanted"), RESPONSE_RULES, ids=[r[0] for r in RESPONSE_RULES])
def test_response_rule(rule: str, chat: dict[str, Any], stops: tuple[str, ...], wanted: dict[str, Any]) -> None:
    message = to_message(chat, Expect("smollm2", False, stops))
    for key, value in wanted.items():
        assert message[key] == value, key


def test_cached_prompt_tokens_are_cache_reads() -> None:
    chat = completion({"content": "x"})
    chat["usage"]["prompt_tokens_details"] = {"cached_tokens": 5}
    assert to_message(chat, Expect("m", False))["usage"] == {
        "input_tokens": 7,
        "output_tokens": 3,
        "cache_read_input_tokens": 5,
    }


@pytest.mark.parametrize(
    "bad",
    [[], {"choices": []}, {"choices": [{"message": None}]}, {"choices": [{"message": {"tool_calls": [{"id": 1}]}}]}],
)
def test_untranslatable_answers_are_refused(bad: Any) -> None:
    with pytest.raises(BadUpstream):
        to_message(bad, Expect("m", False))


def test_round_trip_of_a_tool_conversation() -> None:
    """Both directions agree: the tool_use Pier hands the client comes back as the same tool call."""
    message = to_message(completion({"content": None, "tool_calls": [CALL]}, "tool_calls"), Expect("m", False))
    again = to_chat(body(messages=[{"role": "user", "content": "q"}, assistant(*message["content"])]), "m")
    assert again["messages"][1]["tool_calls"] == [CALL]


# --- streaming -------------------------------------------------------------------------------------------------


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((STREAMS / f"{name}.json").read_text(encoding="utf-8"))
    return data


def sse(payload: Any) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {text}\n\n".encode()


def parse_events(raw: bytes) -> list[list[Any]]:
    out: list[list[Any]] = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        assert lines[0].startswith("event: "), block
        assert lines[1].startswith("data: "), block
        name, data = lines[0][len("event: ") :], json.loads(lines[1][len("data: ") :])
        assert data["type"] == name
        out.append([name, data])
    return out


@pytest.mark.parametrize("name", ["text", "tool_use", "thinking"])
def test_stream_matches_the_recorded_sequence(name: str) -> None:
    case = recorded(name)
    translator = StreamTranslator(Expect("smollm2", True, tuple(case["stop_sequences"])))
    events: list[list[Any]] = []
    for payload in case["upstream"]:
        out = translator.feed(sse(payload))
        # No buffering: a chunk that carries content yields its delta in the same call.
        if isinstance(payload, dict) and payload.get("choices"):
            delta = payload["choices"][0].get("delta", {})
            if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                assert b"content_block_delta" in out or b"content_block_start" in out
        events.extend(parse_events(out))
    events.extend(parse_events(translator.close()))
    assert events == case["expect"]


@pytest.mark.parametrize("name", ["text", "tool_use", "thinking"])
def test_stream_split_anywhere_gives_the_same_events(name: str) -> None:
    case = recorded(name)
    whole = b"".join(sse(p) for p in case["upstream"]).replace(b"\n", b"\r\n")  # CRLF framing too
    for cut in range(0, len(whole), 7):
        translator = StreamTranslator(Expect("smollm2", True, tuple(case["stop_sequences"])))
        out = translator.feed(whole[:cut]) + translator.feed(whole[cut:]) + translator.close()
        assert parse_events(out) == case["expect"], cut


def test_stream_without_done_still_ends_properly() -> None:
    case = recorded("text")
    translator = StreamTranslator(Expect("smollm2", True, ("\n\nHuman:",)))
    out = b"".join(translator.feed(sse(p)) for p in case["upstream"][:-1]) + translator.close()
    assert parse_events(out) == case["expect"]


def test_stream_that_ends_early_is_an_error_event() -> None:
    translator = StreamTranslator(Expect("m", True))
    out = translator.feed(sse({"id": "x", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}))
    events = parse_events(out + translator.close())
    assert [e[0] for e in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1]["error"]["type"] == "api_error"


def test_upstream_error_event_becomes_an_anthropic_error() -> None:
    translator = StreamTranslator(Expect("m", True))
    out = translator.feed(sse({"error": {"message": "context full", "type": "server_error"}}))
    assert parse_events(out) == [
        ["error", {"type": "error", "error": {"type": "api_error", "message": "context full"}}]
    ]
    assert translator.feed(sse("[DONE]")) == b""


def test_garbage_in_the_stream_is_an_error_event() -> None:
    translator = StreamTranslator(Expect("m", True))
    events = parse_events(translator.feed(b"data: {not json\n\n"))
    assert events[0][0] == "error"


def test_comments_and_keepalives_are_ignored() -> None:
    translator = StreamTranslator(Expect("m", True))
    assert translator.feed(b": keep-alive\n\n") == b""


# --- errors, route probing, count_tokens ------------------------------------------------------------------------

ERRORS = [
    (400, b'{"error":{"message":"bad n","type":"invalid_request_error"}}', "invalid_request_error", "bad n"),
    (
        404,
        b'{"error":{"code":404,"message":"model x not found","type":"not_found_error"}}',
        "not_found_error",
        "model x not found",
    ),
    (500, b"unable to load runner: out of memory\n", "api_error", "unable to load runner: out of memory"),
    (503, b'{"error":"busy"}', "overloaded_error", "busy"),
    (429, b"", "rate_limit_error", "endpoint answered 429"),
]


@pytest.mark.parametrize(("status", "raw", "kind", "message"), ERRORS)
def test_endpoint_errors_in_anthropic_shape(status: int, raw: bytes, kind: str, message: str) -> None:
    assert json.loads(error_body(status, raw)) == {"type": "error", "error": {"type": kind, "message": message}}


def leg(mode: Mode, probe: bool = True) -> Leg:
    return Leg(mode, "/x", b"", Expect("m", False), probe=probe)


@pytest.mark.parametrize(
    ("case", "mode", "content_type", "raw", "missing"),
    [
        ("Go mux", Mode.PASSTHROUGH, "text/plain", b"404 page not found\n", True),
        ("emulated DMR", Mode.PASSTHROUGH, "text/plain; charset=utf-8", b"not found\n", True),
        (
            "llama-server",
            Mode.PASSTHROUGH,
            "application/json",
            b'{"error":{"code":404,"message":"File Not Found"}}',
            True,
        ),
        (
            "unknown model",
            Mode.PASSTHROUGH,
            "application/json",
            b'{"type":"error","error":{"message":"Model not found: x"}}',
            False,
        ),
        ("any 404 on /tokenize", Mode.TOKENIZE, "application/json", b"{}", True),
    ],
)
def test_route_missing(case: str, mode: Mode, content_type: str, raw: bytes, missing: bool) -> None:
    assert route_missing(leg(mode), content_type, raw) is missing
    assert route_missing(leg(mode, probe=False), content_type, raw) is False  # translation: a 404 is an answer


def test_count_tokens_helpers() -> None:
    data = body(
        system="sys", messages=[assistant(TOOL_USE), user({"type": "tool_result", "tool_use_id": "t", "content": "r"})]
    )
    text = prompt_text(data)
    assert text.split("\n")[0] == "sys"
    assert "get_weather" in text
    assert tokenize_body(data) == {"content": text, "add_special": True}
    assert estimate_tokens(data) == -(-len(text) // 4)
    assert tokens_to_count({"tokens": [1, 2, 3]}) == {"input_tokens": 3}
    with pytest.raises(BadUpstream):
        tokens_to_count({"n": 3})


def test_expect_keeps_what_the_answer_needs() -> None:
    assert expect(body(stream=True, stop_sequences=["X"]), "smollm2") == Expect("smollm2", True, ("X",))


# --- invalid bodies ---------------------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("missing max_tokens", {"model": "m", "messages": []}, "max_tokens: Field required"),
    ("max_tokens not an integer", body(max_tokens="10"), "max_tokens: Input should be a valid integer"),
    ("max_tokens a fraction", body(max_tokens=10.5), "max_tokens: Input should be a valid integer"),
    # Found by Schemathesis (were 500s: an unhashable value looked up in a set of names).
    ("tool_choice type an object", body(tool_choice={"type": {}}), "tool_choice.type: Input should be"),
    (
        "image source type a list",
        body(messages=[user({"type": "image", "source": {"type": []}})]),
        "messages.0.content.0.source.type: Input should be",
    ),
    ("max_tokens below 1", body(max_tokens=0), "max_tokens: Input should be greater than or equal to 1"),
    ("missing model", {"max_tokens": 5, "messages": []}, "model: Field required"),
    ("missing messages", {"model": "m", "max_tokens": 5}, "messages: Field required"),
    ("messages not a list", body(messages={"role": "user"}), "messages: Input should be a valid list"),
    ("message not an object", body(messages=["hi"]), "messages.0: Input should be a valid object"),
    (
        "bad role",
        body(messages=[{"role": "system", "content": "x"}]),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "content not text or blocks",
        body(messages=[{"role": "user", "content": 5}]),
        "messages.0.content: Input should be",
    ),
    ("bad block type", body(messages=[user({"type": "video"})]), "messages.0.content.0.type: Input should be one of"),
    (
        "assistant may not send images",
        body(messages=[assistant(IMG)]),
        "messages.0.content.0.type: Input should be one of",
    ),
    ("block without type", body(messages=[user({"text": "x"})]), "messages.0.content.0.type: Field required"),
    ("text block without text", body(messages=[user({"type": "text"})]), "messages.0.content.0.text: Input should be"),
    (
        "bad image source",
        body(messages=[user({"type": "image", "source": {"type": "file"}})]),
        "messages.0.content.0.source.type",
    ),
    (
        "tool_use without input",
        body(messages=[assistant({"type": "tool_use", "id": "a", "name": "f"})]),
        "messages.0.content.0.input",
    ),
    (
        "tool_result without id",
        body(messages=[user({"type": "tool_result", "content": "x"})]),
        "messages.0.content.0.tool_use_id",
    ),
    ("system not text", body(system=[{"type": "image"}]), "system.0.type: Input should be one of text"),
    ("stop_sequences not strings", body(stop_sequences=[1]), "stop_sequences: Input should be a valid list of strings"),
    ("temperature not a number", body(temperature="hot"), "temperature: Input should be a valid number"),
    ("top_k negative", body(top_k=-1), "top_k: Input should be greater than or equal to 0"),
    ("stream not a boolean", body(stream="yes"), "stream: Input should be a valid boolean"),
    ("tools not a list", body(tools={}), "tools: Input should be a valid list"),
    ("tool without schema", body(tools=[{"name": "f"}]), "tools.0.input_schema: Input should be a valid object"),
    ("server tool", body(tools=[{"name": "w", "type": "web_search_20250305"}]), "tools.0.type: server tool"),
    ("bad tool_choice", body(tool_choice={"type": "some"}), "tool_choice.type: Input should be"),
    ("tool_choice tool without name", body(tool_choice={"type": "tool"}), "tool_choice.name: Field required"),
]


@pytest.mark.parametrize(("case", "data", "message"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_invalid_body_names_the_field(case: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_messages(data)
    assert caught.value.message.startswith(message)
    assert caught.value.status == 400


def test_count_tokens_needs_no_max_tokens() -> None:
    check_messages({"model": "m", "messages": [{"role": "user", "content": "x"}]}, count_tokens=True)
    with pytest.raises(InvalidRequest, match="messages: Field required"):
        check_messages({"model": "m"}, count_tokens=True)


def accumulate(events: list[list[Any]]) -> dict[str, Any]:
    """Rebuild a message from its events, the way the SDK does."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for name, data in events:
        if name == "message_start":
            message = data["message"]
        elif name == "content_block_start":
            message["content"].append(data["content_block"])
        elif name == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                partial[data["index"]] = partial.get(data["index"], "") + delta["partial_json"]
        elif name == "content_block_stop" and data["index"] in partial:
            message["content"][data["index"]]["input"] = json.loads(partial[data["index"]])
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"] = data["usage"]
    return message


def test_a_whole_answer_to_a_stream_request_is_sent_as_events() -> None:
    """An endpoint that ignored `stream`: the client still gets the event sequence, and it adds up."""
    chat = completion({"content": "Hi.", "reasoning_content": "r", "tool_calls": [CALL]}, "tool_calls")
    message = to_message(chat, Expect("smollm2", True))
    events = parse_events(message_events(message))
    assert [e[0] for e in events] == [
        "message_start",
        *(["content_block_start", "content_block_delta", "content_block_stop"] * 3),
        "message_delta",
        "message_stop",
    ]
    assert accumulate(events) == message
    leg = Leg(Mode.TRANSLATION, "/x", b"", Expect("smollm2", True))
    assert leg.whole_as_events
    assert leg.whole(json.dumps(chat).encode()) == message_events(message)


FINAL_CONTENT = {
    "text": [{"type": "text", "text": "Hello there."}],
    "tool_use": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}},
    ],
    "thinking": [
        {"type": "thinking", "thinking": "The user greets me. Greet back.", "signature": ""},
        {"type": "text", "text": "Hi!"},
    ],
}


@pytest.mark.parametrize("name", ["text", "tool_use", "thinking"])
def test_recorded_streams_add_up_to_the_message(name: str) -> None:
    """What the SDK rebuilds from a translated stream: the whole answer, nothing lost or doubled."""
    message = accumulate(json.loads(json.dumps(recorded(name)["expect"])))
    assert message["content"] == FINAL_CONTENT[name]


# --- which legs an endpoint gets ---------------------------------------------------------------------------------


def targets() -> dict[str, Target]:
    cfg = config(endpoint("dmr"), endpoint("oai", type_="openai-compatible", url="http://oai.test:8080"))
    return dict(build_table(cfg, states(state("dmr"), state("oai", type_="openai-compatible")), now=NOW).targets)


def test_legs_follow_the_profile_and_what_was_learned() -> None:
    now = [100.0]
    bridge = AnthropicBridge(relearn_s=60.0, clock=lambda: now[0])
    dmr, oai = targets()["dmr"], targets()["oai"]
    data = body()

    def modes(target: Target, count: bool) -> list[tuple[Mode, str]]:
        return [(leg.mode, leg.path) for leg in bridge.legs(target, count, data, b"{}", "m", "")]

    assert modes(dmr, False) == [
        (Mode.PASSTHROUGH, "/anthropic/v1/messages"),
        (Mode.TRANSLATION, "/engines/v1/chat/completions"),
    ]
    assert modes(oai, False) == [(Mode.TRANSLATION, "/v1/chat/completions")]
    assert modes(dmr, True) == [
        (Mode.PASSTHROUGH, "/anthropic/v1/messages/count_tokens"),
        (Mode.TOKENIZE, "/tokenize"),
        (Mode.ESTIMATE, ""),
    ]
    assert modes(oai, True) == [(Mode.TOKENIZE, "/tokenize"), (Mode.ESTIMATE, "")]
    bridge.remember(dmr, next(bridge.legs(dmr, False, data, b"{}", "m", "")))
    bridge.remember(oai, next(bridge.legs(oai, True, data, b"{}", "m", "")))
    assert modes(dmr, False) == [(Mode.TRANSLATION, "/engines/v1/chat/completions")]
    assert modes(oai, True) == [(Mode.ESTIMATE, "")]
    now[0] += 61.0  # long ago: the routes are tried again (an upgraded endpoint may have them now)
    assert modes(dmr, False)[0] == (Mode.PASSTHROUGH, "/anthropic/v1/messages")
    assert modes(oai, True)[0] == (Mode.TOKENIZE, "/tokenize")


def test_passthrough_keeps_the_query_and_sends_the_body_as_given() -> None:
    bridge = AnthropicBridge()
    legs = list(bridge.legs(targets()["dmr"], False, body(), b'{"as":"sent"}', "ai/smollm2:latest", "beta=true"))
    assert legs[0].path == "/anthropic/v1/messages?beta=true"
    assert legs[0].body == b'{"as":"sent"}'
    assert json.loads(legs[1].body)["model"] == "ai/smollm2:latest"  # the name the endpoint is sent


def test_text_documents_are_translated_and_others_refused() -> None:
    text_doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "The doc."}}
    chat = to_chat(body(messages=[user(text_doc, {"type": "text", "text": "Summarise."})]), "m")
    assert chat["messages"] == [{"role": "user", "content": "The doc.\nSummarise."}]
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
    data = body(messages=[user(pdf)])
    check_messages(data)  # valid Anthropic: a native endpoint may take it
    with pytest.raises(InvalidRequest, match="messages: a document with a 'base64' source needs an endpoint"):
        list(AnthropicBridge().legs(targets()["oai"], False, data, b"{}", "m", ""))
    native = AnthropicBridge().legs(targets()["dmr"], False, data, b"{}", "m", "")
    assert next(native).mode is Mode.PASSTHROUGH  # passthrough first; translation only if the route is missing
    with pytest.raises(InvalidRequest):
        next(native)
