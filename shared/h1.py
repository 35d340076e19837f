"""HTTP/1.1 on the wire, toward endpoints: the request head the router writes, and an incremental parser of the
response (RFC 9112): status line and headers, then the body by its framing (Content-Length, chunked, or until
the endpoint closes). No I/O here: `shared.h1client` feeds it the bytes of one connection.

Why not aiohttp's client: it builds a request object, a response object, a stream reader, trace hooks and a
cookie filter per request, which was most of the router's CPU per request. The router needs far less: it
forwards bytes and reads back one response per connection at a time (no pipelining, no redirects, no cookies,
no decompression).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import Enum
from typing import NamedTuple

from multidict import CIMultiDict, CIMultiDictProxy

MAX_HEAD_BYTES = 64 * 1024  # a response head bigger than this is refused (aiohttp's default limit is 8 KiB a line)
MAX_LINE_BYTES = 4096  # a chunk-size line or trailer line
_NO_BODY_STATUSES = frozenset({204, 304})
_BODY_FIELDS = frozenset({"content-length", "transfer-encoding"})
# Field lines: an RFC 9110 token, a colon, a value without CR, LF or NUL, CRLF. A bare CR or LF could hide a
# field inside another's value; whitespace before the colon and folded lines are refused, as RFC 9112 asks.
_FIELDS = re.compile(r"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\0]*\r\n)*")
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


class BadResponse(Exception):
    """The endpoint's bytes are not a valid HTTP/1.1 response."""


class Framing(Enum):
    """How the end of the body is known."""

    NONE = "none"  # HEAD, 204, 304: no body at all
    LENGTH = "length"  # Content-Length
    CHUNKED = "chunked"  # Transfer-Encoding: chunked
    CLOSE = "close"  # neither: the body ends when the endpoint closes the connection


class Head(NamedTuple):
    """A response's status line and headers. (A named tuple: built once per response, and cheaply.)"""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    framing: Framing
    length: int  # Content-Length (LENGTH framing), else 0
    keep_alive: bool  # the connection may carry another request after this response


def _bad_field(block: str) -> str:
    """What is wrong in a field block `_FIELDS` refused (the slow path, for the message)."""
    for line in block.split("\r\n"):
        if line and _FIELDS.fullmatch(line + "\r\n") is None:
            return f"bad header line {line[:80]!r}"
    return "a CR, LF or NUL byte inside the response head"


class _Chunk(Enum):
    SIZE = 0  # expecting a chunk-size line
    DATA = 1  # inside a chunk's data
    DATA_END = 2  # expecting the CRLF after a chunk's data
    TRAILER = 3  # after the last chunk: trailer lines until an empty one


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]], body_length: int) -> bytes:
    """The request line and headers (with `Host`, and `Content-Length` unless a GET or HEAD has no body), ready to
    write before the body. A CR or LF inside a name or value would let it smuggle another header or request:
    ValueError.
    """
    lines = [f"{method} {target} HTTP/1.1\r\n", f"Host: {host}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    if body_length or method not in ("GET", "HEAD"):  # some servers refuse a body on GET, even an empty one
        lines.append(f"Content-Length: {body_length}\r\n")
    lines.append("\r\n")
    text = "".join(lines)
    if text.count("\n") != len(lines) or text.count("\r") != len(lines):
        raise ValueError("a header name or value holds a line break")
    return text.encode("utf-8", "surrogateescape")


class ResponseParser:
    """One response, parsed as its bytes arrive: `feed` returns the body bytes each read completes."""

    __slots__ = ("_buf", "_chunk", "_chunk_left", "_left", "_no_body", "anomaly", "complete", "head", "reusable")

    def __init__(self, *, no_body: bool = False) -> None:
        self._no_body = no_body  # a HEAD request: whatever the headers say, no body follows
        self._buf = b""
        self._left = 0  # LENGTH: body bytes still to come
        self._chunk = _Chunk.SIZE
        self._chunk_left = 0
        self.head: Head | None = None
        self.complete = False  # the whole response arrived
        self.reusable = False  # complete, framed unambiguously, keep-alive, and nothing stray after it
        # What made the framing doubtful (the connection is then never reused), for the operator's log.
        self.anomaly: str | None = None

    def feed(self, data: bytes) -> bytes:
        """Take the next bytes from the connection; return the (decoded) body bytes among them.

        Raises BadResponse on anything that is not HTTP/1.1; bytes after a complete response make the connection
        unusable (`reusable` stays False), since the router never pipelines.
        """
        head = self.head
        if head is None:
            data = self._buf + data if self._buf else data
            self._buf = b""
            data = self._parse_head(data)
            head = self.head
            if head is None:
                return b""
            if self.complete:
                if data:
                    self._stray()
                return b""
        elif self.complete:
            if data:
                self._stray()
            return b""
        if head.framing is Framing.LENGTH:
            left = self._left
            if len(data) < left:
                self._left = left - len(data)
                return data
            self._left = 0
            self._finish(head, stray=len(data) > left)
            return data if len(data) == left else data[:left]
        if head.framing is Framing.CHUNKED:
            return self._chunked(head, data)
        return data  # CLOSE: everything until the end of the connection

    def feed_eof(self) -> None:
        """The endpoint closed the connection: the end of a CLOSE-framed body, else a cut response."""
        if self.complete:
            return
        head = self.head
        if head is not None and head.framing is Framing.CLOSE:
            self.complete = True
            return
        if head is None:
            raise BadResponse("the endpoint closed the connection inside the response head")
        raise BadResponse("the endpoint closed the connection before the end of the response body")

    def _finish(self, head: Head, *, stray: bool) -> None:
        self.complete = True
        self.reusable = head.keep_alive and not stray
        if stray:
            self._stray()

    def _stray(self) -> None:
        self.reusable = False
        self.anomaly = self.anomaly or "bytes after the end of the response"

    def _doubt(self, what: str) -> None:
        """The framing is not beyond doubt: this connection carries no other request."""
        self.anomaly = self.anomaly or what

    def _parse_head(self, data: bytes) -> bytes:
        """Parse heads from `data` (skipping interim 1xx ones); return the bytes after the final head."""
        while True:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    raise BadResponse(f"response head over {MAX_HEAD_BYTES} bytes")
                self._buf = data
                return b""
            if end > MAX_HEAD_BYTES:
                raise BadResponse(f"response head over {MAX_HEAD_BYTES} bytes")
            head = self._head(data[:end])
            data = data[end + 4 :]
            if head is None:
                continue  # an interim response (100 Continue, 103 Early Hints): the real one follows
            self.head = head
            if head.framing is Framing.NONE or (head.framing is Framing.LENGTH and head.length == 0):
                self._finish(head, stray=False)
            else:
                self._left = head.length
            return data

    def _head(self, raw: bytes) -> Head | None:
        """The head before its final CRLF CRLF (the status line ends in CRLF unless there are no fields)."""
        line_end = raw.find(b"\r\n")
        status_line = raw if line_end < 0 else raw[:line_end]
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        if len(code) != 3 or not code.isdigit() or code[:1] == b"0":
            raise BadResponse(f"bad status code in {status_line[:80]!r}")
        if b"\r" in reason or b"\n" in reason or b"\0" in reason:
            raise BadResponse(f"a CR, LF or NUL byte in the status line {status_line[:80]!r}")
        status = int(code)
        # All fields at once, in C: one decode, one check of the whole block, one split into (name, value).
        block = raw[line_end + 2 :].decode("utf-8", "surrogateescape") + "\r\n" if line_end >= 0 else ""
        if _FIELDS.fullmatch(block) is None:
            raise BadResponse(_bad_field(block))
        pairs: list[tuple[str, str]] = []
        for line in block.split("\r\n"):
            if line:  # the block checked out: each line is a name, a colon and a value (a loop beats findall)
                name, _, value = line.partition(":")
                pairs.append((name, value.strip(" \t")))
        if status < 200:
            if status == 101:
                raise BadResponse("the endpoint switched protocols, which the router does not forward")
            if any(name.lower() in _BODY_FIELDS for name, _ in pairs):
                self._doubt(f"an interim {status} response with body headers")
            return None
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        framing, length, clean = self._framing(status, headers)
        if version == b"HTTP/1.0" and "Transfer-Encoding" in headers:
            clean = False  # RFC 9112 6.1: faulty framing in HTTP/1.0; close the connection after the message
            self._doubt("Transfer-Encoding in an HTTP/1.0 response")
        if self.anomaly is not None:
            clean = False  # an interim response before this one was already doubtful
        connection = ",".join(headers.getall("Connection", ())).lower()
        # HTTP/1.1 keeps the connection unless told otherwise; HTTP/1.0 only when asked.
        persistent = "close" not in connection if version == b"HTTP/1.1" else "keep-alive" in connection
        keep_alive = persistent and clean and framing is not Framing.CLOSE
        return Head(status, reason.decode("latin-1"), headers, framing, length, keep_alive)

    def _framing(self, status: int, headers: CIMultiDictProxy[str]) -> tuple[Framing, int, bool]:
        """(framing, length, clean): clean is False when the framing is not beyond doubt (no reuse after)."""
        encodings = headers.getall("Transfer-Encoding", ())
        lengths = headers.getall("Content-Length", ())
        if self._no_body or status in _NO_BODY_STATUSES:
            # No body by definition, whatever the headers say. But a 204/304 (or HEAD answer) is where a sloppy
            # endpoint writes a body anyway, late: bytes that would become the next request's answer. Such a
            # connection is never reused; with body headers on it, that is also worth the operator's attention.
            if status in _NO_BODY_STATUSES and (encodings or any(v.strip() != "0" for v in lengths)):
                self._doubt(f"body headers on a {status} response, which has no body")
            return Framing.NONE, 0, False
        if encodings:
            codings = [c.strip().lower() for value in encodings for c in value.split(",") if c.strip()]
            # Only chunked (after any number of identity) is decoded here; gzip and the rest would reach the
            # client as bytes no header explains. RFC 9112 6.1 lets a proxy refuse what it cannot decode.
            if not codings or codings[-1] != "chunked" or any(c != "identity" for c in codings[:-1]):
                raise BadResponse(f"unsupported Transfer-Encoding {', '.join(encodings)[:80]!r}")
            if lengths:  # both: Transfer-Encoding wins (RFC 9112 6.3), and the connection is not trusted after
                self._doubt("both Content-Length and Transfer-Encoding")
                return Framing.CHUNKED, 0, False
            return Framing.CHUNKED, 0, True
        if lengths:
            values = {v.strip() for value in lengths for v in value.split(",")}
            if len(values) != 1:
                raise BadResponse(f"conflicting Content-Length values {sorted(values)}")
            (value,) = values
            if not value.isascii() or not value.isdigit() or len(value) > 18:
                raise BadResponse(f"bad Content-Length {value[:40]!r}")
            return Framing.LENGTH, int(value), True
        return Framing.CLOSE, 0, False

    def _chunked(self, head: Head, data: bytes) -> bytes:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        out: list[bytes] = []
        pos = 0
        size = len(data)
        while pos < size:
            state = self._chunk
            if state is _Chunk.DATA:
                take = min(self._chunk_left, size - pos)
                out.append(data[pos : pos + take] if take < size or pos else data)
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk = _Chunk.DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                if size - pos > MAX_LINE_BYTES:
                    raise BadResponse("chunk framing line too long")
                self._buf = data[pos:]
                break
            line = data[pos:end]
            pos = end + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if state is _Chunk.SIZE:
                digits = line.split(b";", 1)[0].strip(b" \t")
                if not digits or len(digits) > 15 or not _HEX_DIGITS.issuperset(digits):
                    raise BadResponse(f"bad chunk size line {line[:40]!r}")
                self._chunk_left = int(digits, 16)
                self._chunk = _Chunk.DATA if self._chunk_left else _Chunk.TRAILER
            elif state is _Chunk.DATA_END:
                if line:
                    raise BadResponse("chunk data longer than its size")
                self._chunk = _Chunk.SIZE
            elif not line:  # TRAILER: the empty line ends the message; trailer fields are dropped
                self._finish(head, stray=pos < size)
                break
        if len(out) == 1:
            return out[0]
        return b"".join(out)
