"""A small streaming client that records every socket read, to see whether SSE events were relayed one by one.

It speaks raw HTTP/1.1 over an asyncio Protocol: each `data_received` is one read from the socket. After
the response ends, the body is de-chunked while remembering which read each byte arrived in, so every
SSE event (ending in a blank line) maps to the read that completed it. A proxy that buffers shows up as
reads completing several events; one that relays as produced shows one event per read, spaced in time.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

EVENT_END = re.compile(rb"\r?\n\r?\n")  # an SSE event ends with a blank line


@dataclass(frozen=True, slots=True)
class StreamSample:
    status: int
    ttfb_s: float  # request sent -> first byte of the response body
    first_event_s: float  # request sent -> first complete SSE event
    total_s: float  # request sent -> end of the response
    events: int
    reads: int
    max_events_per_read: int
    last_event_s: float  # request sent -> last event completed
    coalesced: int  # events that completed in a read that completed another event too

    @property
    def own_reads(self) -> bool:
        """Every event arrived in a read of its own (nothing coalesced on the way)."""
        return self.events > 0 and self.max_events_per_read == 1


class _Recorder(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.done = done

    def data_received(self, data: bytes) -> None:
        self.reads.append((time.perf_counter(), data))
        # The response ends with the zero-size chunk; we asked for `Connection: close` as a backstop.
        if (data == b"0\r\n\r\n" or data.endswith(b"\r\n0\r\n\r\n")) and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def stream_once(
    url: str, body: bytes, *, timeout_s: float = 30.0, headers: dict[str, str] | None = None
) -> StreamSample:
    """POST `body` to `url` and time the streamed answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    ).encode() + body
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, recorder = await loop.create_connection(lambda: _Recorder(done), host, port)
    try:
        started = time.perf_counter()
        transport.write(request)
        await asyncio.wait_for(done, timeout_s)
    finally:
        transport.close()
    return analyse(started, recorder.reads)


def analyse(started: float, reads: list[tuple[float, bytes]]) -> StreamSample:
    """Turn the timed reads of one response into a sample (de-chunking, event boundaries per read)."""
    raw = b"".join(data for _, data in reads)
    # Map each raw byte offset to the read it arrived in.
    read_ends: list[int] = []
    offset = 0
    for _, data in reads:
        offset += len(data)
        read_ends.append(offset)
    head_end = raw.find(b"\r\n\r\n")
    if head_end < 0:
        raise ValueError(f"no complete response head in {raw[:200]!r}")
    head = raw[:head_end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    chunked = any(h.lower().replace(" ", "") == "transfer-encoding:chunked" for h in head[1:])
    body_spans = _chunk_spans(raw, head_end + 4) if chunked else [(head_end + 4, len(raw))]
    body = bytearray()
    origin: list[int] = []  # raw offset of each body byte
    for start, end in body_spans:
        body += raw[start:end]
        origin.extend(range(start, end))

    def read_index(raw_offset: int) -> int:
        for index, end in enumerate(read_ends):
            if raw_offset < end:
                return index
        return len(read_ends) - 1

    events_per_read: dict[int, int] = {}
    event_times: list[float] = []
    for match in EVENT_END.finditer(body):
        index = read_index(origin[match.end() - 1])
        events_per_read[index] = events_per_read.get(index, 0) + 1
        event_times.append(reads[index][0] - started)
    first_body_read = read_index(origin[0]) if origin else len(reads) - 1
    return StreamSample(
        status=status,
        ttfb_s=reads[first_body_read][0] - started if reads else 0.0,
        first_event_s=event_times[0] if event_times else 0.0,
        total_s=reads[-1][0] - started if reads else 0.0,
        events=len(event_times),
        reads=len(reads),
        max_events_per_read=max(events_per_read.values(), default=0),
        last_event_s=event_times[-1] if event_times else 0.0,
        coalesced=sum(n for n in events_per_read.values() if n > 1),
    )


def _chunk_spans(raw: bytes, pos: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    while pos < len(raw):
        line_end = raw.find(b"\r\n", pos)
        if line_end < 0:
            break
        size = int(raw[pos:line_end].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            break
        spans.append((line_end + 2, min(len(raw), line_end + 2 + size)))
        pos = line_end + 2 + size + 2
    return spans


async def run_streams(
    url: str, body: bytes, *, count: int, timeout_s: float = 30.0, headers: dict[str, str] | None = None
) -> list[StreamSample]:
    """`count` streams one after the other (concurrency 1)."""
    return [await stream_once(url, body, timeout_s=timeout_s, headers=headers) for _ in range(count)]
