"""The router's HTTP/1.1 wire code without I/O: `request_head` and the incremental `ResponseParser`.

Adversarial on purpose: every response is also fed byte by byte and split in two at every offset (the parser
must give the same body, the same head and the same end whatever the reads look like), and the refusals are
the RFC 9112 / RFC 9110 ones a proxy must make so that it never forwards a response it framed differently
from the endpoint.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import pytest

from shared.h1 import MAX_HEAD_BYTES, MAX_LINE_BYTES, BadResponse, Framing, ResponseParser, request_head

# -- helpers


def run(pieces: Iterable[bytes], *, no_body: bool = False, eof: bool = False) -> tuple[ResponseParser, bytes]:
    """Feed `pieces` in order (then the end of the connection when `eof`); return the parser and the body."""
    parser = ResponseParser(no_body=no_body)
    body = bytearray()
    for piece in pieces:
        body += parser.feed(piece)
    if eof:
        parser.feed_eof()
    return parser, bytes(body)


def byte_by_byte(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


def two_way_splits(raw: bytes) -> Iterator[list[bytes]]:
    for cut in range(len(raw) + 1):
        yield [raw[:cut], raw[cut:]]


def random_splits(raw: bytes, *, rounds: int, seed: int) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    for _ in range(rounds):
        cuts = sorted(rng.sample(range(1, len(raw)), k=min(len(raw) - 1, rng.randint(2, 12))))
        yield [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def every_split(raw: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte, every 2-way split and a few seeded n-way splits."""
    yield [raw]
    yield byte_by_byte(raw)
    yield from two_way_splits(raw)
    yield from random_splits(raw, rounds=50, seed=len(raw))


def head_of(parser: ResponseParser) -> tuple[int, str, Framing, bool]:
    assert parser.head is not None
    return parser.head.status, parser.head.reason, parser.head.framing, parser.head.keep_alive


def ended_by_close(parser: ResponseParser) -> bool:
    """The endpoint closes the connection: is the response complete now?"""
    parser.feed_eof()
    return parser.complete


def feed_until_refused(parser: ResponseParser, piece: bytes, *, most: int) -> int:
    """Feed `piece` again and again until BadResponse; return the bytes fed before the refusal."""
    fed = 0
    while fed < most:
        try:
            parser.feed(piece)
        except BadResponse:
            return fed
        fed += len(piece)
    raise AssertionError(f"{fed} bytes fed without a refusal")


def feed_expecting_bad(raw: bytes, *, eof: bool = False) -> BadResponse:
    """`raw` must be refused whether it arrives at once or byte by byte."""
    for pieces in ([raw], byte_by_byte(raw)):
        with pytest.raises(BadResponse) as caught:
            run(pieces, eof=eof)
    return caught.value


# -- Content-Length bodies

CL_BODY = b'{"id":"x","text":"0\r\n\r\nHTTP/1.1 200 OK\r\n"}'  # framing-looking bytes inside the body
CL_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(CL_BODY)).encode()
    + b"\r\n\r\n"
    + CL_BODY
)


def test_content_length_body_fed_byte_by_byte_completes_exactly_at_the_last_byte() -> None:
    parser = ResponseParser()
    body = bytearray()
    for i, piece in enumerate(byte_by_byte(CL_RESPONSE)):
        assert not parser.complete, f"complete before byte {i} of {len(CL_RESPONSE)}"
        body += parser.feed(piece)
    assert parser.complete
    assert parser.reusable
    assert bytes(body) == CL_BODY
    assert head_of(parser) == (200, "OK", Framing.LENGTH, True)
    assert parser.head is not None
    assert parser.head.length == len(CL_BODY)
    assert parser.head.headers["content-type"] == "application/json"


def test_content_length_body_same_result_at_every_split() -> None:
    for pieces in every_split(CL_RESPONSE):
        parser, body = run(pieces)
        assert body == CL_BODY, [len(p) for p in pieces]
        assert parser.complete
        assert parser.reusable


def test_zero_content_length_is_complete_with_the_head() -> None:
    parser, body = run([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    assert body == b""
    assert parser.complete
    assert parser.reusable


def test_repeated_identical_content_length_values_are_one_length() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\nhello"
    parser, body = run([raw])
    assert body == b"hello"
    assert parser.complete
    assert parser.head is not None
    assert parser.head.length == 5


# -- chunked bodies

CHUNK_A = b"hello"
CHUNK_B = b"0\r\n\r\n" + b"x" * 21  # 26 bytes that look like a last chunk: data, not framing
CHUNK_C = b"\r\n\r\n\n\n\r\r\n;"  # 10 bytes of line breaks
CHUNKED_BODY = CHUNK_A + CHUNK_B + CHUNK_C
assert (len(CHUNK_A), len(CHUNK_B), len(CHUNK_C)) == (0x5, 0x1A, 0xA)
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'5;name=value;other="quoted;x"\r\n' + CHUNK_A + b"\r\n"  # chunk extensions
    b"1A\r\n" + CHUNK_B + b"\r\n"  # uppercase hex
    b"a\n" + CHUNK_C + b"\n"  # bare-LF lines
    b"0;last=1\r\nX-Trailer: yes\r\nX-Other: 2\r\n\r\n"  # last chunk with an extension, trailers
)


def test_chunked_body_fed_byte_by_byte_completes_exactly_at_the_last_byte() -> None:
    parser = ResponseParser()
    body = bytearray()
    for i, piece in enumerate(byte_by_byte(CHUNKED_RESPONSE)):
        assert not parser.complete, f"complete before byte {i} of {len(CHUNKED_RESPONSE)}"
        body += parser.feed(piece)
    assert parser.complete
    assert parser.reusable
    assert bytes(body) == CHUNKED_BODY
    assert head_of(parser) == (200, "OK", Framing.CHUNKED, True)


def test_chunked_body_same_result_at_every_split() -> None:
    for pieces in every_split(CHUNKED_RESPONSE):
        parser, body = run(pieces)
        assert body == CHUNKED_BODY, [len(p) for p in pieces]
        assert parser.complete, [len(p) for p in pieces]
        assert parser.reusable


def test_chunked_trailers_are_not_body_nor_headers() -> None:
    parser, body = run([CHUNKED_RESPONSE])
    assert b"X-Trailer" not in body
    assert parser.head is not None
    assert "X-Trailer" not in parser.head.headers


@pytest.mark.parametrize(
    "last",
    [b"0\r\n\r\n", b"0\n\n", b"0\r\n\n", b"000\r\n\r\n", b"0 \r\n\r\n", b"0;a=b\r\nT: 1\nU: 2\r\n\r\n"],
    ids=["crlf", "bare-lf", "mixed", "zeros", "trailing-space", "trailers-mixed"],
)
def test_chunked_last_chunk_forms(last: bytes) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" + last
    for pieces in every_split(raw):
        parser, body = run(pieces)
        assert body == b"abc"
        assert parser.complete
        assert parser.reusable


def test_chunked_body_with_one_big_chunk_arrives_in_pieces_as_they_come() -> None:
    data = bytes(range(256)) * 64  # 16 KiB
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4000\r\n" + data + b"\r\n0\r\n\r\n"
    parser = ResponseParser()
    head_end = raw.index(b"\r\n\r\n") + 4
    assert parser.feed(raw[:head_end]) == b""
    out = [parser.feed(raw[i : i + 1000]) for i in range(head_end, len(raw), 1000)]
    # Each read yields the data it carried (no holding back until the chunk is whole).
    assert all(out[:-1]), [len(piece) for piece in out]
    assert b"".join(out) == data
    assert parser.complete


def test_transfer_encoding_is_case_insensitive_and_identity_before_chunked_is_allowed() -> None:
    for coding in (b"CHUNKED", b"identity, chunked", b"Identity,Chunked"):
        parser, body = run([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\n\r\n2\r\nhi\r\n0\r\n\r\n"])
        assert body == b"hi"
        assert head_of(parser)[2] is Framing.CHUNKED
        assert parser.complete
        assert parser.reusable
        assert parser.anomaly is None


@pytest.mark.parametrize(
    "coding",
    [b"gzip, chunked", b"gzip", b"identity", b"chunked, gzip", b"deflate, identity, chunked", b"chunked, chunked", b""],
)
def test_a_transfer_coding_the_router_cannot_decode_is_a_bad_response(coding: bytes) -> None:
    """gzip under chunked would reach the client as compressed bytes no header explains: refused (a 502)."""
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + coding + b"\r\nContent-Length: 2\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    with pytest.raises(BadResponse, match="unsupported Transfer-Encoding"):
        run([raw])


def test_transfer_encoding_and_content_length_chunked_wins_and_connection_not_reused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    for pieces in every_split(raw):
        parser, body = run(pieces)
        assert body == b"hello"
        assert parser.complete
        assert not parser.reusable
        assert head_of(parser)[2:] == (Framing.CHUNKED, False)
        assert parser.anomaly == "both Content-Length and Transfer-Encoding"


# -- bodies read until the endpoint closes


def test_read_until_close_body_ends_with_feed_eof() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, " + b"second part"
    for pieces in every_split(raw):
        parser, body = run(pieces)
        assert body == b"first part, second part"
        assert not parser.complete  # only the close ends it
        assert ended_by_close(parser)
        assert not parser.reusable
        assert head_of(parser)[2:] == (Framing.CLOSE, False)


def test_read_until_close_with_an_empty_body() -> None:
    parser, body = run([b"HTTP/1.1 200 OK\r\n\r\n"], eof=True)
    assert body == b""
    assert parser.complete
    assert not parser.reusable


# -- responses without a body


def test_head_request_response_has_no_body_whatever_its_headers_say_and_is_not_reused() -> None:
    """A HEAD answer with a body header is normal (the GET's length), but its connection is not provably clean:
    an endpoint that writes the body anyway would hand it to the next request. Closed, without a warning."""
    for framing in (b"Content-Length: 1000\r\n", b"Transfer-Encoding: chunked\r\n", b""):
        raw = b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n"
        for pieces in two_way_splits(raw):
            parser, body = run(pieces, no_body=True)
            assert body == b""
            assert parser.complete, framing
            assert not parser.reusable, framing
            assert parser.anomaly is None
            assert head_of(parser)[2] is Framing.NONE


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_are_complete_with_the_head_and_never_reused(status: int) -> None:
    raw = f"HTTP/1.1 {status} Nothing\r\nContent-Length: 0\r\nETag: x\r\n\r\n".encode()
    for pieces in every_split(raw):
        parser, body = run(pieces)
        assert body == b""
        assert parser.complete
        assert not parser.reusable
        assert parser.anomaly is None  # `Content-Length: 0` is what many servers send: no warning
        assert head_of(parser) == (status, "Nothing", Framing.NONE, False)


@pytest.mark.parametrize("status", [204, 304])
@pytest.mark.parametrize("framing", [b"Content-Length: 315\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_body_headers_on_a_no_body_status_are_an_anomaly(status: int, framing: bytes) -> None:
    """The cross-user leak of issue 17: a 204 with `Content-Length: 315` whose 315 bytes come a moment later."""
    raw = f"HTTP/1.1 {status} Nothing\r\n".encode() + framing + b"\r\n"
    parser, body = run([raw])
    assert body == b""
    assert parser.complete
    assert not parser.reusable
    assert parser.anomaly is not None
    assert f"body headers on a {status} response" in parser.anomaly
    assert parser.feed(b'{"id":"chatcmpl-evil"}') == b""  # late bytes are never body


@pytest.mark.parametrize("status", [204, 304])
def test_bytes_after_a_no_body_status_make_the_connection_unusable(status: int) -> None:
    parser, body = run([f"HTTP/1.1 {status} Nothing\r\n\r\n".encode() + b"hello"])
    assert body == b""
    assert parser.complete
    assert not parser.reusable
    assert parser.anomaly == "bytes after the end of the response"


def test_an_interim_response_with_body_headers_makes_the_final_one_unreusable() -> None:
    raw = b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    parser, body = run([raw])
    assert body == b"ok"
    assert parser.complete
    assert not parser.reusable
    assert parser.anomaly == "an interim 100 response with body headers"


def test_longer_and_shorter_than_content_length() -> None:
    longer, body = run([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSMUGGLED"])
    assert body == b"ok"  # the extra bytes are nobody's body
    assert not longer.reusable
    assert longer.anomaly == "bytes after the end of the response"
    shorter, body = run([b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok"])
    assert body == b"ok"
    assert not shorter.complete
    with pytest.raises(BadResponse, match="before the end of the response body"):
        shorter.feed_eof()


# -- interim responses


INTERIM = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
)


def test_interim_responses_are_skipped_at_every_split() -> None:
    for pieces in every_split(INTERIM):
        parser, body = run(pieces)
        assert body == b"ok"
        assert head_of(parser) == (201, "Created", Framing.LENGTH, True)
        assert parser.head is not None
        assert "Link" not in parser.head.headers  # the 103's fields belong to the 103
        assert parser.complete
        assert parser.reusable


def test_head_stays_none_while_only_interim_responses_arrived() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n") == b""
    assert parser.head is None
    assert not parser.complete


def test_switching_protocols_is_refused() -> None:
    feed_expecting_bad(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")


# -- keep-alive


@pytest.mark.parametrize(
    ("version", "connection", "reusable"),
    [
        (b"HTTP/1.1", b"", True),
        (b"HTTP/1.1", b"Connection: keep-alive\r\n", True),
        (b"HTTP/1.1", b"Connection: close\r\n", False),
        (b"HTTP/1.1", b"Connection: Close\r\n", False),
        (b"HTTP/1.1", b"Connection: Upgrade, close\r\n", False),
        (b"HTTP/1.0", b"", False),
        (b"HTTP/1.0", b"Connection: keep-alive\r\n", True),
        (b"HTTP/1.0", b"Connection: Keep-Alive\r\n", True),
        (b"HTTP/1.0", b"Connection: close\r\n", False),
    ],
)
def test_keep_alive_rules_by_version_and_connection_header(version: bytes, connection: bytes, reusable: bool) -> None:
    raw = version + b" 200 OK\r\n" + connection + b"Content-Length: 2\r\n\r\nok"
    parser, body = run([raw])
    assert body == b"ok"
    assert parser.complete
    assert parser.reusable is reusable
    assert head_of(parser)[3] is reusable


def test_http10_keep_alive_without_length_is_read_until_close_and_not_reused() -> None:
    parser, body = run([b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nhello"])
    assert body == b"hello"
    assert not parser.complete
    assert ended_by_close(parser)
    assert not parser.reusable


def test_close_in_any_connection_field_line_means_close() -> None:
    # RFC 9110 5.3: several field lines of one name are one comma-separated list; `close` in any of them counts.
    raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    parser, body = run([raw])
    assert body == b"ok"
    assert parser.complete
    assert not parser.reusable, "a `Connection: close` on the second field line was ignored"


def test_http10_with_transfer_encoding_is_not_reused() -> None:
    # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing: close after it.
    raw = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
    parser, body = run([raw])
    assert body == b"ok"
    assert parser.complete
    assert not parser.reusable, "an HTTP/1.0 response with Transfer-Encoding left the connection reusable"


# -- stray bytes after the response


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ],
    ids=["length", "chunked"],
)
def test_bytes_after_a_complete_response_make_the_connection_unusable(raw: bytes) -> None:
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"  # a pipelined answer nobody asked for
    for pieces in ([raw + stray], [raw, stray], [*byte_by_byte(raw), b"H"]):
        parser, body = run(pieces)
        assert body == b"ok"
        assert parser.complete
        assert not parser.reusable, [len(p) for p in pieces]


# -- bad responses


@pytest.mark.parametrize(
    "status_line",
    [
        b"garbage",
        b"\x00\x01\x02\x03",
        b"",
        b"HTTP/1.1",
        b"HTTP/1.1 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 -20 OK",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",
        b"http/1.1 200 OK",
        b"ICY 200 OK",
        b" HTTP/1.1 200 OK",
    ],
)
def test_bad_status_line_is_refused(status_line: bytes) -> None:
    feed_expecting_bad(status_line + b"\r\nContent-Length: 0\r\n\r\n")


def test_status_line_without_reason_is_accepted() -> None:
    parser, _ = run([b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"])
    assert head_of(parser) == (200, "", Framing.LENGTH, True)


@pytest.mark.parametrize(
    "lengths",
    [
        [b"abc"],
        [b"-1"],
        [b"+5"],
        [b"1.5"],
        [b"0x10"],
        [b""],
        [b"5 5"],
        ["\uff15".encode()],  # a full-width digit five
        [b"1" * 19],
        [b"5, 6"],
        [b"5,"],
        [b"5", b"6"],
    ],
    ids=repr,
)
def test_bad_content_length_is_refused(lengths: list[bytes]) -> None:
    fields = b"".join(b"Content-Length: " + value + b"\r\n" for value in lengths)
    feed_expecting_bad(b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n" + b"hello")


@pytest.mark.parametrize(
    "field",
    [
        b"NoColon",
        b"Content-Length : 5",
        b"Content-Length\t: 5",
        b" X-Leading: space",
        b"X-A: b\r\n continued",
        b"X-A: b\r\n\tcontinued",
        b"Bad Name: x",
        b"X(A): x",
        b": no name",
        b"X-\xc3\xa9: non-ascii name",
    ],
)
def test_bad_header_line_is_refused(field: bytes) -> None:
    feed_expecting_bad(b"HTTP/1.1 200 OK\r\n" + field + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize(
    "value",
    [b"a\nContent-Length: 100", b"a\rb", b"a\x00b", b"a\n b"],
    ids=["lf-smuggles-a-field", "bare-cr", "nul", "lf-space"],
)
def test_header_value_with_cr_lf_or_nul_is_refused_or_cleaned(value: bytes) -> None:
    # RFC 9110 5.5: a recipient of CR, LF or NUL in a field value MUST reject the message or replace each with SP
    # before forwarding it. A value the router would forward with a line break in it splits the client's response.
    raw = b"HTTP/1.1 200 OK\r\nX-A: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    try:
        parser, _ = run([raw])
    except BadResponse:
        return
    assert parser.head is not None
    assert not set(parser.head.headers["X-A"]) & {"\r", "\n", "\0"}, parser.head.headers["X-A"]


def test_reason_phrase_with_a_line_break_is_refused_or_cleaned() -> None:
    # RFC 9112 4: reason-phrase is HTAB / SP / VCHAR / obs-text only; a bare LF there hides a field line.
    raw = b"HTTP/1.1 200 OK\nContent-Length: 5\r\nX-B: 1\r\n\r\nhello"
    try:
        parser, _ = run([raw], eof=True)
    except BadResponse:
        return
    assert parser.head is not None
    assert not set(parser.head.reason) & {"\r", "\n"}, parser.head.reason


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n",
        b"\r\n",
        b" \r\n",
        b";ext=1\r\n",
        b"-1\r\n",
        b"+5\r\n",
        b"0x5\r\n",
        b"5_0\r\n",
        b"1" * 16 + b"\r\n",
        b"3\r\nabcdef\r\n0\r\n\r\n",
        b"3\r\nabcX\r\n0\r\n\r\n",
        b"3\r\nabc\r\r\n0\r\n\r\n",
        b"3\r\nabc0\r\n\r\n",
    ],
    ids=repr,
)
def test_bad_chunk_framing_is_refused(body: bytes) -> None:
    feed_expecting_bad(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)


def test_overlong_chunk_size_line_is_refused_without_buffering_forever() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    fed = feed_until_refused(parser, b"1;" + b"e" * 98, most=4 * MAX_LINE_BYTES)  # an extension that never ends
    assert fed <= MAX_LINE_BYTES, f"buffered {fed} bytes of a chunk-size line before refusing"


def test_oversized_head_in_one_read_is_refused() -> None:
    raw = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(BadResponse, match="head"):
        run([raw])


def test_oversized_head_arriving_slowly_is_refused_once_past_the_limit() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\n")
    fed = feed_until_refused(parser, b"X-Many: " + b"v" * 1014 + b"\r\n", most=4 * MAX_HEAD_BYTES)  # no end of head
    assert fed <= MAX_HEAD_BYTES + 1024, f"buffered {fed} bytes of head before refusing"


def test_head_just_under_the_limit_is_accepted() -> None:
    fields = b"".join(b"X-F%05d: " % i + b"v" * 1000 + b"\r\n" for i in range(MAX_HEAD_BYTES // 1024 - 2))
    raw = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"
    assert raw.index(b"\r\n\r\n") < MAX_HEAD_BYTES
    parser, body = run([raw])
    assert body == b"ok"
    assert parser.head is not None
    assert len(parser.head.headers) == MAX_HEAD_BYTES // 1024 - 1


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Len",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n",
    ],
    ids=[
        "nothing",
        "mid-head",
        "head-end-cut",
        "interim-only",
        "mid-length-body",
        "chunked-no-chunk",
        "mid-chunk",
        "chunk-no-crlf",
        "no-last-chunk",
        "no-final-crlf",
        "mid-trailers",
    ],
)
def test_connection_closed_before_the_end_is_a_bad_response(raw: bytes) -> None:
    for pieces in ([raw], byte_by_byte(raw)):
        parser, _ = run(pieces)
        with pytest.raises(BadResponse):
            parser.feed_eof()
        assert not parser.complete


def test_feed_eof_after_a_complete_response_changes_nothing() -> None:
    parser, _ = run([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    parser.feed_eof()
    assert parser.complete
    assert parser.reusable


# -- head fields


def test_head_keeps_every_field_line_in_order_and_trims_optional_whitespace() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many Requests\r\nSet-Cookie: a=1\r\nset-cookie:b=2\r\nX-Pad: \t spaced \t\r\n"
        b"X-Empty:\r\nContent-Length: 0\r\n\r\n"
    )
    parser, _ = run([raw])
    assert parser.head is not None
    assert parser.head.status == 429
    assert parser.head.reason == "Too Many Requests"
    assert parser.head.headers.getall("Set-Cookie") == ["a=1", "b=2"]
    assert parser.head.headers["X-Pad"] == "spaced"
    assert parser.head.headers["X-Empty"] == ""


def test_header_values_keep_non_ascii_bytes_as_utf8() -> None:
    value = "caf\u00e9 \u2713 \u6a21\u578b"
    raw = b"HTTP/1.1 200 OK\r\nX-Model: " + value.encode("utf-8") + b"\r\nContent-Length: 0\r\n\r\n"
    parser, _ = run([raw])
    assert parser.head is not None
    assert parser.head.headers["X-Model"] == value


def test_header_values_that_are_not_utf8_round_trip_byte_for_byte() -> None:
    raw_value = b"\xff\xfe latin-1 \xe9"
    raw = b"HTTP/1.1 200 OK\r\nX-Raw: " + raw_value + b"\r\nContent-Length: 0\r\n\r\n"
    parser, _ = run([raw])
    assert parser.head is not None
    decoded = parser.head.headers["X-Raw"]
    assert decoded.encode("utf-8", "surrogateescape") == raw_value
    # ...and the request side writes such a value back as the same bytes.
    assert b"X-Raw: " + raw_value + b"\r\n" in request_head("GET", "/", "h", [("X-Raw", decoded)], 0)


# -- request_head


def test_request_head_exact_bytes() -> None:
    head = request_head(
        "POST", "/engines/v1/chat/completions?x=1", "127.0.0.1:12434", [("Content-Type", "application/json")], 42
    )
    assert head == (
        b"POST /engines/v1/chat/completions?x=1 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:12434\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 42\r\n"
        b"\r\n"
    )


def test_request_head_without_headers() -> None:
    # A GET without a body says nothing of one; a POST always gives its length, even 0.
    assert request_head("GET", "/models", "h:1", [], 0) == b"GET /models HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert request_head("HEAD", "/", "h:1", [], 0) == b"HEAD / HTTP/1.1\r\nHost: h:1\r\n\r\n"
    assert (
        request_head("POST", "/v1/embeddings", "h:1", [], 0)
        == b"POST /v1/embeddings HTTP/1.1\r\nHost: h:1\r\nContent-Length: 0\r\n\r\n"
    )


def test_request_head_writes_non_ascii_values_as_utf8() -> None:
    value = "caf\u00e9 \u2713"
    head = request_head("GET", "/", "h", [("X-Name", value)], 0)
    assert b"X-Name: " + value.encode("utf-8") + b"\r\n" in head
    # The round trip: the parser reads the same bytes back as the same text.
    response = b"HTTP/1.1 200 OK\r\n" + head.split(b"\r\n", 2)[2]  # this head's field lines, as a response's
    parser, _ = run([response])
    assert parser.head is not None
    assert parser.head.headers["X-Name"] == value


@pytest.mark.parametrize(
    ("method", "target", "host", "headers"),
    [
        ("GET", "/", "h", [("X-A", "a\r\nX-Injected: 1")]),
        ("GET", "/", "h", [("X-A", "a\nb")]),
        ("GET", "/", "h", [("X-A", "a\rb")]),
        ("GET", "/", "h", [("X-A", "ok"), ("X-B", "a\r")]),
        ("GET", "/", "h", [("X-A\r\nX-Injected", "1")]),
        ("GET", "/", "h", [("X\nA", "1")]),
        ("GET", "/", "h", [("X-A\r", "1"), ("X-B", "\n")]),
        ("GET", "/ HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /", "h", []),
        ("GET", "/\n", "h", []),
        ("GET\r\n", "/", "h", []),
        ("GET", "/", "h\r\nX-Injected: 1", []),
    ],
)
def test_request_head_refuses_line_breaks_anywhere(
    method: str, target: str, host: str, headers: list[tuple[str, str]]
) -> None:
    with pytest.raises(ValueError, match="line break"):
        request_head(method, target, host, headers, 0)
