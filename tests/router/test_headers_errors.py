"""Pure parts of the proxy: which headers cross, request ids, error shapes and DMR error normalisation."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from services.router.errors import (
    Flavour,
    InvalidJSON,
    InvalidRequest,
    ModelNotFound,
    Unavailable,
    error_body,
    flavour_of,
    loading_message,
    normalise_upstream_error,
)
from services.router.headers import RequestIds, downstream_headers, upstream_headers, with_endpoint_headers
from services.router.proxy import parse_body, sniff_model


def proxy_of(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_client_credentials_origin_and_hop_by_hop_headers_stay_behind() -> None:
    client = proxy_of(
        ("Host", "router:40114"),
        ("Authorization", "Bearer client-secret"),
        ("Cookie", "a=b"),
        ("Proxy-Authorization", "Basic x"),
        ("Origin", "http://evil.example"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "12"),
        ("Content-Type", "application/json"),
        ("X-Custom", "kept"),
        ("X-Request-ID", "from-client"),
    )
    out = upstream_headers(client, "rid-1")
    assert dict(out) == {
        "Content-Type": "application/json",
        "X-Custom": "kept",
        "X-Request-ID": "rid-1",
        "Accept-Encoding": "identity",  # never gzip on the client's behalf
    }
    assert upstream_headers(proxy_of(("Accept-Encoding", "gzip")), "r")["Accept-Encoding"] == "gzip"


def test_endpoint_headers_are_added_and_win() -> None:
    base = upstream_headers(proxy_of(("X-Api-Key", "client"), ("X-Team", "client"), ("Accept", "*/*")), "rid")
    assert "X-Api-Key" not in base  # the client's credential never reaches an endpoint
    merged = with_endpoint_headers(base, {"X-Api-Key": "endpoint", "X-Team": "endpoint", "Authorization": "Bearer t"})
    assert merged["X-Api-Key"] == "endpoint"
    assert merged["X-Team"] == "endpoint"  # the endpoint's configured header replaces the client's
    assert merged["Authorization"] == "Bearer t"
    assert base["X-Team"] == "client"  # the shared base is not changed
    assert with_endpoint_headers(base, {}) is base


def test_response_drops_set_cookie_and_hop_by_hop_and_adds_via() -> None:
    upstream = proxy_of(
        ("Content-Type", "text/event-stream"),
        ("Set-Cookie", "session=1"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        ("Via", "1.1 other"),
        ("Content-Length", "10"),
    )
    out = downstream_headers(upstream)
    assert "Set-Cookie" not in out
    assert "Transfer-Encoding" not in out
    assert "Connection" not in out
    assert out["Content-Length"] == "10"
    assert out["Via"] == "1.1 other, 1.1 pier"


@pytest.mark.parametrize(
    ("inbound", "echoed"),
    [("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("bad id", False), ("x\r\ny", False), ("", False)],
)
def test_request_id_echoes_only_sane_values(inbound: str, echoed: bool) -> None:
    ids = RequestIds(trust_inbound=True)
    result = ids.for_request(inbound)
    assert (result == inbound) is echoed
    assert result


def test_request_ids_are_unique_and_untrusted_inbound_is_ignored() -> None:
    ids = RequestIds(trust_inbound=False)
    assert ids.for_request("abc") != "abc"
    generated = {ids.new() for _ in range(1000)}
    assert len(generated) == 1000


def test_openai_and_anthropic_error_shapes() -> None:
    err = ModelNotFound("nope", ["ai/smollm2:latest"])
    body = json.loads(error_body(err, Flavour.OPENAI))
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "model_not_found"
    assert "ai/smollm2:latest" in body["error"]["message"]
    assert body["error"]["available_models"] == ["ai/smollm2:latest"]
    anthropic = json.loads(error_body(err, Flavour.ANTHROPIC))
    assert anthropic == {"type": "error", "error": {"type": "not_found_error", "message": err.message}}
    unavailable = Unavailable("later", retry_after_s=7)
    assert unavailable.headers == {"Retry-After": "7"}
    assert flavour_of("/olla/anthropic/v1/messages") is Flavour.ANTHROPIC
    assert flavour_of("/engines/v1/chat/completions") is Flavour.OPENAI


def test_dmr_text_errors_become_json_with_message_kept() -> None:
    text = b"error while getting model: model not found\n"
    body = normalise_upstream_error(404, "text/plain; charset=utf-8", text, Flavour.OPENAI)
    assert body is not None
    assert json.loads(body) == {
        "error": {
            "message": "error while getting model: model not found",
            "type": "not_found_error",
            "code": 404,
            "param": None,
        }
    }
    anthropic = normalise_upstream_error(500, "text/plain", b"unable to load runner\n", Flavour.ANTHROPIC)
    assert anthropic is not None
    assert json.loads(anthropic)["error"] == {"type": "api_error", "message": "unable to load runner"}
    # JSON errors (llama.cpp's) pass through untouched.
    assert normalise_upstream_error(503, "application/json", b'{"error":{}}', Flavour.OPENAI) is None


def test_loading_message_detection() -> None:
    assert loading_message(b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}')
    assert not loading_message(b'{"error":{"code":503,"message":"busy","type":"unavailable_error"}}')
    assert not loading_message(b"service unavailable")
    # An endpoint's 503 nested past the parser's depth is not a crash, just not "loading".
    assert not loading_message(b'{"error":' * 10_000 + b"1" + b"}" * 10_000)


@pytest.mark.parametrize(
    ("body", "model"),
    [
        (b'{"model": "ai/smollm2", "messages": []}', "ai/smollm2"),
        (b'{"messages": [{"content": "a \\"model\\": \\"x\\""}], "model" :\n "m1"}', "m1"),
        (b'{ "stream": true,"model":"m2"}', "m2"),
        (b'{"model": "a", "metadata": {"model": "b"}}', None),  # two keys: parse
        (b'{"x\\"model": "evil"}', None),  # a key ending in `"model`, not `model`
        (b'{"model": "caf\\u00e9"}', None),  # escapes: parse
        (b'{"model": 3}', None),
        (b'{"messages": []}', None),
        (b'[{"model": "m"}]', None),
    ],
)
def test_model_sniffing_is_exact_or_defers_to_the_parser(body: bytes, model: str | None) -> None:
    assert sniff_model(body) == model
    if model is not None:
        assert json.loads(body)["model"] == model


def test_body_parsing() -> None:
    assert parse_body(b'{"model": "m", "x": 1}') == ({"model": "m", "x": 1}, "m")
    assert parse_body(b'{"messages": []}')[1] is None
    with pytest.raises(InvalidJSON):
        parse_body(b"{nope")
    with pytest.raises(InvalidJSON):
        parse_body(b"  ")
    with pytest.raises(InvalidRequest):
        parse_body(b"[1, 2]")
    with pytest.raises(InvalidRequest):
        parse_body(b'{"model": 3}')
    with pytest.raises(InvalidJSON, match="nested too deeply"):
        parse_body(b"[" * 10_000 + b"]" * 10_000)
